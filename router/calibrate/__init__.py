"""`router calibrate`: fit a cascade threshold (target escalation rate or risk control)."""

from router.calibrate.fit import Fit, escalation_rate, fit_rate, fit_risk

__all__ = ["Fit", "escalation_rate", "fit_rate", "fit_risk"]

"""Serving policies with state: a fixed threshold, or a target escalation rate held online.

`TargetRateDecider` keeps the last `window` scores in a ring buffer and escalates a score below
their `rate`-quantile. A window lags a drifting distribution by up to `window` requests, so a
small integral controller corrects the quantile level with the realised escalation rate:

    level = clip(rate + offset, 0, 1);  threshold = quantile(window, level)
    offset += gain * (rate - escalated)          # after every decision

In a stationary stream the offset hovers around 0 and the threshold is the window quantile;
after a shift it moves the level until the realised rate is back at the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from router.config import Settings
from router.decision import escalates, scorable
from router.errors import PolicyError
from router.learned import Confidence
from router.policy import Policy, TargetRateRule, ThresholdRule, load_policy

DEFAULT_GAIN = 0.05


class Decider(Protocol):
    signal: Confidence

    @property
    def threshold(self) -> float: ...

    def decide(self, score: float) -> bool:
        """Whether to escalate `score`; records the decision in the online state."""
        ...


class ThresholdDecider:
    def __init__(self, signal: Confidence, escalate_below: float) -> None:
        self.signal = signal
        self._threshold = escalate_below

    @property
    def threshold(self) -> float:
        return self._threshold

    def decide(self, score: float) -> bool:
        return escalates(score, self._threshold)


class TargetRateDecider:
    """Escalate the lowest `rate` of recent traffic. Example: rate 0.3, window 1000."""

    def __init__(self, signal: Confidence, rule: TargetRateRule, *,
                 gain: float = DEFAULT_GAIN) -> None:
        self.signal = signal
        self.rate = rule.escalation_rate
        self.min_samples = max(1, rule.min_samples)
        self.initial = rule.initial_threshold
        self.gain = gain
        self._buf = np.empty(rule.window, np.float64)  # ring buffer of recent finite scores
        self._n = 0  # scores seen (the buffer holds min(n, window))
        self._offset = 0.0
        self._cached: float | None = None

    @property
    def n_scores(self) -> int:
        return min(self._n, len(self._buf))

    @property
    def threshold(self) -> float:
        if self._cached is not None:
            return self._cached
        n = self.n_scores
        if n < self.min_samples and self.initial is not None:
            value = self.initial
        elif n == 0:
            value = -math.inf  # nothing seen, no initial threshold: accept
        else:
            level = min(1.0, max(0.0, self.rate + self._offset))
            value = float(np.quantile(self._buf[:n], level))
        self._cached = value
        return value

    def decide(self, score: float) -> bool:
        escalate = escalates(score, self.threshold)
        if not scorable(score):
            return escalate  # nothing to score: not part of the window either
        self._buf[self._n % len(self._buf)] = score
        self._n += 1
        if self._n > self.min_samples:
            self._offset += self.gain * (self.rate - float(escalate))
            self._offset = min(1.0 - self.rate, max(-self.rate, self._offset))
        self._cached = None
        return escalate


def decider_for(policy: Policy) -> Decider:
    """A serving policy -> a fresh decider (one per tier: online state is per tier)."""
    rule = policy.for_serving().rule
    if isinstance(rule, ThresholdRule):
        assert rule.escalate_below is not None
        return ThresholdDecider(policy.signal, rule.escalate_below)
    if isinstance(rule, TargetRateRule):
        return TargetRateDecider(policy.signal, rule)
    raise PolicyError(f"policy {policy.name!r}: rule {rule.kind!r} cannot drive a cascade")


@dataclass(frozen=True)
class ServingPlan:
    """Every policy a cascade serves with, loaded and checked, and fresh deciders for them."""

    policies: tuple[Policy, ...]  # one per tier: its own, else the cascade's
    deciders: tuple[Decider | None, ...]  # one per tier; None for the last (it always answers)
    gate: Decider | None  # the prompt gate's


def serving_plan(settings: Settings) -> ServingPlan:
    """The policies of `settings.cascade` and its tiers -> a ServingPlan; a PolicyError names
    the file and what is wrong. The cascade is built on it, and `router serve --workers N`
    calls it before starting any worker, so a bad policy stops the server, not N workers."""
    cfg = settings.cascade
    default = load_policy(settings.resolve(cfg.policy)).for_serving()
    policies = tuple(load_policy(settings.resolve(t.policy)).for_serving()
                     if t.policy is not None else default for t in settings.tiers)
    n = len(policies)
    deciders = tuple(decider_for(p) if i < n - 1 else None for i, p in enumerate(policies))
    gate: Decider | None = None
    if cfg.prompt_gate is not None and n > 1:
        gate_policy = load_policy(settings.resolve(cfg.prompt_gate.policy))
        gate_policy.token_signal  # noqa: B018 - a gate scores the prompt text: one scorer signal
        gate = decider_for(gate_policy)
    return ServingPlan(policies, deciders, gate)

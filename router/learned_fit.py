"""Fit a learned deferral rule: L2-regularised logistic regression from confidence features to
"tier 0's answer is correct" (scikit-learn, imported inside the functions: `router calibrate`
and `router eval --cv` fit; `serve` applies the weights with numpy, router.learned).

    fit = fit_learned(x, correct, features, meta={...})
    fit.signal          -> LearnedSignal (weights, standardisation, provenance)
    fit.cv_auroc        -> AUROC of out-of-fold scores (each row scored by a model that never
                           saw it), the figure to trust
    out_of_fold(x, correct, features, folds=5) -> (n,) such scores, for `router eval --cv`
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from router.errors import InputError
from router.evaluate.metrics_math import auroc
from router.learned import LearnedSignal
from router.probes import ANSWER_TOKENS, CONSISTENCY, PROMPT_FAMILIARITY, TRUNCATED, VERIFY

#: the default feature vector: quantiles of the token logprobs (Gupta et al.), the other token
#: signals, and every probe
DEFAULT_FEATURES: tuple[str, ...] = (
    "mean_logprob", "min_logprob", "quantile_logprob_q0.1", "quantile_logprob_q0.25",
    "quantile_logprob_q0.5", "logprob_per_byte", "neg_mean_entropy", "mean_margin",
    VERIFY, CONSISTENCY, PROMPT_FAMILIARITY, ANSWER_TOKENS, TRUNCATED,
)
DEFAULT_C = 0.1
DEFAULT_FOLDS = 5

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LearnFit:
    signal: LearnedSignal
    cv_auroc: float
    cv_scores: npt.NDArray[np.float64]  # out-of-fold log-odds, one per row
    train_auroc: float


def standardisation(x: Matrix) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Column means and standard deviations, ignoring NaN; a constant or empty column gets
    scale 1 (it carries no information and must not divide by zero).

    >>> c, s = standardisation(np.array([[1.0, 5.0], [3.0, 5.0], [float("nan"), 5.0]]))
    >>> c.tolist(), s.tolist()
    ([2.0, 5.0], [1.0, 1.0])
    """
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(x)
        counts = finite.sum(axis=0)
        safe = np.where(finite, x, 0.0)
        center = np.where(counts > 0, safe.sum(axis=0) / np.maximum(counts, 1), 0.0)
        var = np.where(finite, (x - center) ** 2, 0.0).sum(axis=0) / np.maximum(counts, 1)
    scale = np.sqrt(var)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return center.astype(np.float64), scale.astype(np.float64)


def _standardise(x: Matrix, center: npt.NDArray[np.float64],
                 scale: npt.NDArray[np.float64]) -> Matrix:
    z = (x - center) / scale
    return np.where(np.isfinite(z), z, 0.0)


def _fit_weights(x: Matrix, y: npt.NDArray[np.bool_], c: float
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], Matrix, float]:
    from sklearn.linear_model import LogisticRegression

    center, scale = standardisation(x)
    z = _standardise(x, center, scale)
    model = LogisticRegression(C=c, max_iter=5000)
    model.fit(z, y.astype(int))
    return center, scale, np.asarray(model.coef_[0], np.float64), float(model.intercept_[0])


def _check(x: Matrix, y: npt.NDArray[np.bool_], features: Sequence[str], folds: int) -> None:
    if x.ndim != 2 or x.shape[1] != len(features) or x.shape[0] != y.shape[0]:
        raise InputError(f"learned rule: {x.shape} features for {y.shape[0]} labels and "
                         f"{len(features)} feature names")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if min(n_pos, n_neg) < max(folds, 2):
        raise InputError(f"learned rule: needs at least {max(folds, 2)} correct and as many "
                         f"wrong tier-0 answers to fit and cross-validate, got {n_pos} correct "
                         f"and {n_neg} wrong")


def out_of_fold(x: Matrix, correct: npt.ArrayLike, features: Sequence[str], *,
                c: float = DEFAULT_C, folds: int = DEFAULT_FOLDS, seed: int = 0
                ) -> npt.NDArray[np.float64]:
    """(n,) log-odds where row i is scored by a rule fitted on the other folds (stratified)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(correct, dtype=bool)
    _check(x, y, features, folds)
    scores = np.full(len(y), np.nan)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        center, scale, w, b = _fit_weights(x[train], y[train], c)
        scores[test] = _standardise(x[test], center, scale) @ w + b
    return scores


def fit_learned(x: Matrix, correct: npt.ArrayLike, features: Sequence[str], *,
                c: float = DEFAULT_C, folds: int = DEFAULT_FOLDS, seed: int = 0,
                meta: Mapping[str, Any] | None = None) -> LearnFit:
    """The rule fitted on every row, with its cross-validated AUROC in `fitted`."""
    y = np.asarray(correct, dtype=bool)
    _check(x, y, features, folds)
    cv = out_of_fold(x, y, features, c=c, folds=folds, seed=seed)
    center, scale, w, b = _fit_weights(x, y, c)
    cv_auc = auroc(cv, y.astype(np.float64))
    train = _standardise(x, center, scale) @ w + b
    fitted = {**(meta or {}), "n": len(y), "n_correct": int(y.sum()),
              "method": "logistic_regression_l2", "C": c, "folds": folds,
              "cv_auroc": round(float(cv_auc), 6),
              "train_auroc": round(float(auroc(train, y.astype(np.float64))), 6)}
    signal = LearnedSignal(tuple(features), tuple(float(v) for v in center),
                           tuple(float(v) for v in scale), tuple(float(v) for v in w), b, fitted)
    return LearnFit(signal, float(cv_auc), cv, float(fitted["train_auroc"]))


def usable_features(x: Matrix, features: Sequence[str]) -> list[str]:
    """The features whose column has a finite value somewhere (a probe that never ran leaves
    an all-NaN column, which a rule cannot use). Example: [[1, nan]] with (a, b) -> [a]."""
    return [f for j, f in enumerate(features) if np.isfinite(x[:, j]).any()]

"""Fit a learned deferral rule: L2-regularised logistic regression from confidence features to
"tier 0's answer is correct" (scikit-learn, imported inside the functions: `router calibrate`
and `router eval --cv` fit; `serve` applies the weights with numpy, router.learned).

    fit = fit_learned(x, correct, features, meta={...})
    fit.signal          -> LearnedSignal (weights, standardisation, provenance)
    fit.cv_auroc        -> AUROC of out-of-fold scores (each row scored by a model that never
                           saw it), the figure to trust
    out_of_fold(x, correct, features, folds=5) -> (n,) such scores, for `router eval --cv`

With `text=TextFit(("question", "answer"))` and each row's `texts`, the words of the question
and the answer join the features (router.text_features): one logistic regression over the
standardised features and `scale` times each field's TF-IDF terms, whose vocabulary and idf are
learned from the training rows only (per fold, too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from router.errors import InputError
from router.evaluate.metrics_math import auroc
from router.learned import LearnedSignal
from router.probes import ANSWER_TOKENS, CONSISTENCY, PROMPT_FAMILIARITY, TRUNCATED, VERIFY
from router.text_features import (
    DEFAULT_NGRAMS,
    DEFAULT_TEXT_SCALE,
    TEXT_FIELDS,
    TextBlock,
    Texts,
    document_frequencies,
    tfidf_matrix,
)

#: the default feature vector: quantiles of the token logprobs (Gupta et al.), the other token
#: signals, and every probe
DEFAULT_FEATURES: tuple[str, ...] = (
    "mean_logprob", "min_logprob", "quantile_logprob_q0.1", "quantile_logprob_q0.25",
    "quantile_logprob_q0.5", "logprob_per_byte", "neg_mean_entropy", "mean_margin",
    VERIFY, CONSISTENCY, PROMPT_FAMILIARITY, ANSWER_TOKENS, TRUNCATED,
)
DEFAULT_C = 0.1
DEFAULT_FOLDS = 5
#: k-fold is repeated with this many shuffles and each row's out-of-fold scores averaged: on
#: the 80-160 rows of a calibration set one shuffle's AUROC moves by 0.03-0.05 (measured)
DEFAULT_REPEATS = 5

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TextFit:
    """Which text fields a rule learns term weights for, and how (router.text_features)."""

    fields: tuple[str, ...] = ()
    ngrams: int = DEFAULT_NGRAMS
    scale: float = DEFAULT_TEXT_SCALE

    def __post_init__(self) -> None:
        bad = [f for f in self.fields if f not in TEXT_FIELDS]
        if bad:
            raise InputError(f"text field {bad[0]!r} is not one of {', '.join(TEXT_FIELDS)}")

    def describe(self) -> dict[str, Any]:
        return {"fields": list(self.fields), "ngrams": self.ngrams, "scale": self.scale}


NO_TEXT = TextFit()
#: the words of the question and of the answer, and the C that suits a rule with them (chosen
#: by 5-fold cross-validation on the built-in set; see bench/RESULTS.md)
DEFAULT_TEXT_FIT = TextFit(TEXT_FIELDS)
DEFAULT_TEXT_C = 3.0


def text_fit_of(signal: LearnedSignal) -> TextFit:
    """How a fitted rule's text blocks were made (to refit it the same way)."""
    if not signal.text:
        return NO_TEXT
    b = signal.text[0]
    return TextFit(tuple(t.field for t in signal.text), b.ngrams, b.scale)


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


def _fit_weights(x: Matrix, y: npt.NDArray[np.bool_], features: Sequence[str], c: float,
                 texts: Sequence[Texts] | None = None, text: TextFit = NO_TEXT
                 ) -> LearnedSignal:
    from sklearn.linear_model import LogisticRegression

    center, scale = standardisation(x)
    blocks = [_standardise(x, center, scale)]
    vocabs: list[tuple[str, list[str], dict[str, float]]] = []
    for f in text.fields:
        assert texts is not None
        column = [t.get(f, "") for t in texts]
        idf, _ = document_frequencies(column, text.ngrams)
        vocab = sorted(idf)
        blocks.append(text.scale * tfidf_matrix(column, vocab, idf, text.ngrams))
        vocabs.append((f, vocab, idf))
    model = LogisticRegression(C=c, max_iter=5000)
    model.fit(np.hstack(blocks), y.astype(int))
    coef = np.asarray(model.coef_[0], np.float64)
    d = x.shape[1]
    fitted_blocks = []
    at = d
    for f, vocab, idf in vocabs:
        w = coef[at:at + len(vocab)]
        at += len(vocab)
        fitted_blocks.append(TextBlock(f, text.ngrams, text.scale, idf,
                                       {t: float(v) for t, v in zip(vocab, w, strict=True)}))
    return LearnedSignal(tuple(features), tuple(float(v) for v in center),
                         tuple(float(v) for v in scale), tuple(float(v) for v in coef[:d]),
                         float(model.intercept_[0]), {}, tuple(fitted_blocks))


def _check(x: Matrix, y: npt.NDArray[np.bool_], features: Sequence[str], folds: int,
           texts: Sequence[Texts] | None = None, text: TextFit = NO_TEXT) -> None:
    if x.ndim != 2 or x.shape[1] != len(features) or x.shape[0] != y.shape[0]:
        raise InputError(f"learned rule: {x.shape} features for {y.shape[0]} labels and "
                         f"{len(features)} feature names")
    if text.fields and (texts is None or len(texts) != y.shape[0]):
        raise InputError("learned rule: text fields need each row's question and answer")
    if not features and not text.fields:
        raise InputError("learned rule: no features and no text fields to learn from")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if min(n_pos, n_neg) < max(folds, 2):
        raise InputError(f"learned rule: needs at least {max(folds, 2)} correct and as many "
                         f"wrong tier-0 answers to fit and cross-validate, got {n_pos} correct "
                         f"and {n_neg} wrong")


def _rows(texts: Sequence[Texts] | None, idx: npt.NDArray[np.intp]) -> list[Texts] | None:
    return None if texts is None else [texts[i] for i in idx]


def out_of_fold(x: Matrix, correct: npt.ArrayLike, features: Sequence[str], *,
                c: float = DEFAULT_C, folds: int = DEFAULT_FOLDS, seed: int = 0,
                texts: Sequence[Texts] | None = None, text: TextFit = NO_TEXT,
                groups: Sequence[str] | None = None, repeats: int = DEFAULT_REPEATS
                ) -> npt.NDArray[np.float64]:
    """(n,) log-odds where row i is scored by rules fitted on the other folds (stratified;
    text vocabularies too are learned from the other folds only), averaged over `repeats`
    shuffles. With `groups` (e.g. each row's prompt), rows of one group share a fold: a
    repeated prompt is never scored by a rule that saw it (when there are at least twice as
    many distinct groups as folds; with fewer, rows are split one by one)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(correct, dtype=bool)
    _check(x, y, features, folds, texts, text)
    total = np.zeros(len(y))
    keys = None if groups is None else [" ".join(g.split()).lower() for g in groups]
    if keys is not None and len(set(keys)) < 2 * folds:
        keys = None
    for r in range(repeats):
        splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(x, y)
                    if keys is None else
                    StratifiedGroupKFold(folds, shuffle=True, random_state=seed + r).split(
                        x, y, keys))
        for train, test in splitter:
            fit = _fit_weights(x[train], y[train], features, c, _rows(texts, train), text)
            total[test] += fit.score_matrix(x[test], _rows(texts, test))
    return total / repeats


def fit_learned(x: Matrix, correct: npt.ArrayLike, features: Sequence[str], *,
                c: float = DEFAULT_C, folds: int = DEFAULT_FOLDS, seed: int = 0,
                meta: Mapping[str, Any] | None = None,
                texts: Sequence[Texts] | None = None, text: TextFit = NO_TEXT,
                groups: Sequence[str] | None = None) -> LearnFit:
    """The rule fitted on every row, with its cross-validated AUROC in `fitted` (folds grouped
    by `groups` when given)."""
    y = np.asarray(correct, dtype=bool)
    _check(x, y, features, folds, texts, text)
    cv = out_of_fold(x, y, features, c=c, folds=folds, seed=seed, texts=texts, text=text,
                     groups=groups)
    fit = _fit_weights(x, y, features, c, texts, text)
    cv_auc = auroc(cv, y.astype(np.float64))
    train = fit.score_matrix(x, texts)
    fitted = {**(meta or {}), "n": len(y), "n_correct": int(y.sum()),
              "method": "logistic_regression_l2", "C": c, "folds": folds,
              "repeats": DEFAULT_REPEATS,
              "cv_auroc": round(float(cv_auc), 6),
              "train_auroc": round(float(auroc(train, y.astype(np.float64))), 6)}
    if text.fields:
        fitted["text"] = text.describe()
    signal = dataclasses.replace(fit, fitted=fitted)
    return LearnFit(signal, float(cv_auc), cv, float(fitted["train_auroc"]))


def usable_features(x: Matrix, features: Sequence[str]) -> list[str]:
    """The features whose column has a finite value somewhere (a probe that never ran leaves
    an all-NaN column, which a rule cannot use). Example: [[1, nan]] with (a, b) -> [a]."""
    return [f for j, f in enumerate(features) if np.isfinite(x[:, j]).any()]

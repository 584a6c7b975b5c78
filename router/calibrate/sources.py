"""Where calibration scores come from: tier 0 answering sample prompts, or a decision log."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from router.backends import Backend
from router.config import Settings
from router.errors import InputError
from router.evalset import EvalItem, check_answer
from router.evaluate.data import read_jsonl
from router.evaluate.run import request_for
from router.scoring import SignalSpec, score_sequences


@dataclass
class Scored:
    """Tier 0's scores of one sample: ids (for labels), where each came from, correctness when
    the prompts carry checks."""

    scores: np.ndarray  # (n,)
    ids: list[str]
    where: list[str]
    model: str
    tier: str
    signal: SignalSpec
    correct: list[bool | None] = field(default_factory=list)
    skipped: int = 0


async def score_prompts(items: Sequence[EvalItem], settings: Settings, backend: Backend,
                        signal: SignalSpec, *, max_tokens: int,
                        log: Callable[[str], None] = lambda _m: None) -> Scored:
    """Tier 0 answers each prompt as `serve` would ask it; the scorer scores the answers."""
    tier = settings.tiers[0]
    seqs, correct = [], []
    for i, item in enumerate(items):
        gen = await backend.generate(request_for(item, max_tokens, tier.top_logprobs))
        seqs.append(gen.logprobs)
        correct.append(check_answer(item.check, gen.text) if item.check is not None else None)
        if (i + 1) % 10 == 0 or i + 1 == len(items):
            log(f"{tier.name}: {i + 1}/{len(items)} prompts")
    result = score_sequences(backend.model_id, seqs, [signal])
    return Scored(scores=result.signal(signal).copy(), ids=[it.id for it in items],
                  where=[str(it.extra.get("where", it.id)) for it in items],
                  model=backend.model_id, tier=tier.name, signal=signal, correct=correct)


SCORED_OUTCOMES = ("accepted", "escalated")


def scores_from_log(path: Path, signal: SignalSpec | None) -> Scored:
    """Tier 0's logged scores: per request, the first tier attempt that answered and was judged
    (accepted or escalated). Direct requests, prompt-gated and failed ones carry no answer
    score and are skipped."""
    scores: list[float] = []
    ids: list[str] = []
    where: list[str] = []
    model = tier = log_signal = None
    first_where = ""
    skipped = 0
    for lineno, rec in read_jsonl(path):
        w = f"{path}:{lineno}"
        attempts = rec.get("tiers")
        if not isinstance(attempts, list) or "signal" not in rec:
            raise InputError(f"{w}: not a decision-log record (needs 'signal' and 'tiers')")
        att = next((a for a in attempts if isinstance(a, dict)
                    and a.get("outcome") in SCORED_OUTCOMES and a.get("score") is not None), None)
        if att is None:
            skipped += 1
            continue
        sig = str(rec["signal"])
        if log_signal is None:
            log_signal, first_where = sig, w
            model, tier = str(att.get("model")), str(att.get("tier"))
        elif sig != log_signal:
            raise InputError(f"{w}: signal {sig} differs from {log_signal} at {first_where}; "
                             "calibrate one signal at a time")
        elif str(att.get("tier")) != tier:
            raise InputError(f"{w}: tier 0 is {att.get('tier')}, was {tier} at {first_where}")
        try:
            value = float(att["score"])
        except (TypeError, ValueError):
            raise InputError(f"{w}: score must be a number, got {att['score']!r}") from None
        scores.append(value if math.isfinite(value) else math.nan)
        ids.append(str(rec.get("id", f"{path.name}:{lineno}")))
        where.append(w)
    if log_signal is None:
        raise InputError(f"{path}: no request with a tier-0 answer score ({skipped} records "
                         "skipped: direct, gated or failed requests)")
    logged = SignalSpec.parse(log_signal)
    if signal is not None and signal.key != logged.key:
        raise InputError(f"{path}: the log holds {logged.key} scores, not {signal.key}; "
                         "calibrate that signal from --prompts instead")
    assert model is not None and tier is not None
    return Scored(scores=np.asarray(scores, np.float64), ids=ids, where=where, model=model,
                  tier=tier, signal=logged, correct=[None] * len(ids), skipped=skipped)


def attach_labels(scored: Scored, labels: dict[str, tuple[bool, str]] | None,
                  labels_path: Path | None) -> np.ndarray:
    """(n,) correctness of each scored answer, from the labels file (by id) or the prompts'
    own checks; a sample without one is an error naming its file and line."""
    out = np.zeros(len(scored.ids), dtype=bool)
    for i, (rid, w) in enumerate(zip(scored.ids, scored.where, strict=True)):
        if labels is not None and rid in labels:
            out[i] = labels[rid][0]
        elif labels is None and scored.correct and scored.correct[i] is not None:
            out[i] = bool(scored.correct[i])
        else:
            src = f" in {labels_path}" if labels_path is not None else ""
            raise InputError(f"{w}: unlabelled row: no label for id {rid!r}{src} "
                             "(risk control needs every answer labelled)")
    return out


"""Where calibration scores come from: tier 0 answering sample prompts, or a decision log."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from router.backends import Backend
from router.config import Settings
from router.errors import InputError, RouterError
from router.evalset import EvalItem, check_answer
from router.evaluate.data import TierOutput, read_jsonl
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
        gen = await backend.generate(request_for(item, max_tokens,
                                                  tier.top_logprobs_for(signal.needs_top_k)))
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
        if rec.get("kind") == "shadow":  # a quality sample's result, not a request
            continue
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



@dataclass
class LearningRows:
    """Labelled tier-0 answers as a feature matrix, for fitting a learned rule."""

    x: np.ndarray  # (n, d) in `features` order
    correct: np.ndarray  # (n,) bool
    features: list[str]
    model: str
    tier: str
    data: str
    max_tokens: int | None = None
    texts: list[dict[str, str]] | None = None  # each row's question and answer, when known
    # (n,) bool, when the last tier's answers are known: tier 0 is right or the last tier is
    # wrong too, so escalating gains nothing (the label of `--learn-target gain`)
    no_gain: np.ndarray | None = None


def rows_from_outputs(outputs: Sequence[TierOutput], features: Sequence[str], *, data: str,
                      max_tokens: int | None = None) -> LearningRows:
    """Tier-0 answers (with their probe features) -> the matrix of the requested features,
    keeping only features that were measured (a probe that never ran is dropped, said so)."""
    from router.learned import feature_matrix, feature_spec
    from router.learned_fit import usable_features

    if not outputs:
        raise InputError(f"{data}: no answers to learn from")
    try:
        specs = [s for s in (feature_spec(f) for f in features) if s is not None]
    except RouterError as exc:
        raise InputError(f"--features: {exc.message}") from None
    cols = score_sequences(outputs[0].model, [o.logprobs for o in outputs], specs).signals
    feats = [o.features for o in outputs]
    x = feature_matrix(cols, feats, features)
    used = usable_features(x, features)
    if not used:
        raise InputError(f"{data}: none of the features {', '.join(features)} was measured")
    return LearningRows(x=feature_matrix(cols, feats, used),
                        correct=np.array([o.correct for o in outputs], dtype=bool),
                        features=used, model=outputs[0].model, tier=outputs[0].tier,
                        data=data, max_tokens=max_tokens)


def learning_rows(args: Any, labels: dict[str, tuple[bool, str]] | None,
                  features: Sequence[str], *,
                  log: Callable[[str], None] = lambda _m: None,
                  texts: bool = False) -> LearningRows:
    """The labelled rows of `router calibrate --learn`: from --recorded (router eval's
    outputs.jsonl), from --prompts (tier 0 answers them now, probes included), or from a
    decision log whose tier-0 attempts carry their features (with --labels). With `texts`,
    each row's question and answer too."""
    import asyncio
    import os

    from router.evaluate.data import load_items, load_recorded_files
    from router.evaluate.run import answer_all, item_texts
    from router.probes import needed_probes, probe_settings

    exclude = frozenset().union(*(_prompts_in(p) for p in
                                  getattr(args, "exclude_prompts", None) or ()))
    if args.recorded is not None:
        records = load_recorded_files(args.recorded)
        kept = [r for r in records if _norm(r.item.prompt) not in exclude][: args.limit]
        if exclude:
            log(f"--exclude-prompts: left out {len(records) - len(kept)} of {len(records)} "
                "rows whose prompt is in " + ", ".join(map(str, args.exclude_prompts)))
        records = kept
        outs = [_relabel(r.outputs[0], r.item.id, labels) for r in records]
        rows = rows_from_outputs(outs, features,
                                 data=" + ".join(str(p) for p in args.recorded))
        last_ok = np.array([r.outputs[-1].correct for r in records], dtype=bool)
        rows = replace(rows, no_gain=rows.correct | ~last_ok)
        if texts:
            rows = replace(rows, texts=[item_texts(r.item, o.text)
                                        for r, o in zip(records, outs, strict=True)])
        return rows
    if args.log is not None:
        if exclude:
            raise InputError("--exclude-prompts works with --recorded and --prompts, not --log")
        return rows_from_log(args.log, labels, features, limit=args.limit, texts=texts)
    from router.backends import build_backend
    from router.config import load_settings
    from router.evalset import DEFAULT_SIZE, generate

    settings = load_settings(args.config)
    if args.prompts == "builtin":
        items = generate(args.seed, args.limit or DEFAULT_SIZE)
        data = f"builtin(seed={args.seed}, n={len(items)})"
    elif args.prompts == "heldout":
        from router.evalset.heldout import generate_heldout

        items = generate_heldout(args.seed, args.limit or DEFAULT_SIZE)
        data = f"heldout(seed={args.seed}, n={len(items)})"
    else:
        path = Path(args.prompts)
        items = load_items(path, require_label=labels is None)[: args.limit]
        data = str(path)
    if exclude:
        n = len(items)
        items = [it for it in items if _norm(it.prompt) not in exclude]
        log(f"--exclude-prompts: left out {n - len(items)} of {n} prompts")
    max_tokens = args.max_tokens or settings.server.default_max_tokens
    tier = settings.tiers[0]
    backend = build_backend(tier, settings, os.environ)
    probes = probe_settings(settings.cascade.probes) if needed_probes(features) else None

    async def run() -> list[TierOutput]:
        try:
            return await answer_all(items, tier, backend, max_tokens=max_tokens, probes=probes,
                                    log=log)
        finally:
            await backend.aclose()

    outs = asyncio.run(run())
    if labels is not None:
        outs = [_relabel(o, it.id, labels) for o, it in zip(outs, items, strict=True)]
    rows = rows_from_outputs(outs, features, data=data, max_tokens=max_tokens)
    if texts:
        rows = replace(rows, texts=[item_texts(it, o.text)
                                    for it, o in zip(items, outs, strict=True)])
    return rows


def _norm(prompt: str) -> str:
    return " ".join(prompt.split()).lower()


def _prompts_in(path: Path) -> frozenset[str]:
    """The prompts of a JSONL file of eval items or recorded outputs (a `prompt` per row)."""
    out = set()
    for lineno, row in read_jsonl(path):
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise InputError(f"{path}:{lineno}: --exclude-prompts needs a 'prompt' per row")
        out.add(_norm(prompt))
    return frozenset(out)


def _relabel(out: TierOutput, rid: str, labels: dict[str, tuple[bool, str]] | None
             ) -> TierOutput:
    if labels is None:
        return out
    if rid not in labels:
        raise InputError(f"--labels: no label for id {rid!r}")
    return replace(out, correct=labels[rid][0])


def rows_from_log(path: Path, labels: dict[str, tuple[bool, str]] | None,
                  features: Sequence[str], *, limit: int | None = None,
                  texts: bool = False) -> LearningRows:
    """Tier-0 attempts of a decision log that carry `features` (serve logs them for every
    judged answer), labelled by --labels (by request id) or by the shadow sample's agreement
    with the top tier (`shadow.agree`) where the request was shadow-sampled. With `texts`, each
    row's question and answer, which serve logs only with `decision_log.include_prompt`."""
    from router.learned_fit import usable_features

    rows: list[dict[str, float]] = []
    correct: list[bool] = []
    row_texts: list[dict[str, str]] = []
    model = tier = None
    records = list(read_jsonl(path))
    shadow = {str(r.get("id")): r["shadow"] for _, r in records
              if r.get("kind") == "shadow" and isinstance(r.get("shadow"), dict)}
    for lineno, rec in records:
        if rec.get("kind") == "shadow":
            continue
        w = f"{path}:{lineno}"
        attempts = rec.get("tiers")
        if not isinstance(attempts, list):
            raise InputError(f"{w}: not a decision-log record (needs 'tiers')")
        att = next((a for a in attempts if isinstance(a, dict)
                    and a.get("outcome") in SCORED_OUTCOMES), None)
        if att is None or not isinstance(att.get("features"), dict):
            continue
        rid = str(rec.get("id", ""))
        label: bool | None = None
        if labels is not None and rid in labels:
            label = labels[rid][0]
        elif rid in shadow and isinstance(shadow[rid].get("agree"), bool):
            label = bool(shadow[rid]["agree"])
        if label is None:
            continue
        if texts:
            question, answer = rec.get("question"), att.get("text")
            if not isinstance(question, str) or not isinstance(answer, str):
                raise InputError(f"{w}: --text needs each request's question and tier-0 "
                                 "answer, which serve logs only with "
                                 "decision_log.include_prompt: true")
            row_texts.append({"question": question, "answer": answer})
        rows.append({str(k): (math.nan if v is None else float(v))
                     for k, v in att["features"].items()})
        correct.append(label)
        model, tier = str(att.get("model")), str(att.get("tier"))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise InputError(f"{path}: no labelled tier-0 answer with logged features (serve logs "
                         "features for every judged answer; label them with --labels by "
                         "request id, or sample them with cascade.shadow)")
    assert model is not None and tier is not None
    cols = {f: np.array([r.get(f, math.nan) for r in rows]) for f in features}
    x = np.stack([cols[f] for f in features], axis=1)
    used = usable_features(x, features)
    if not used:
        raise InputError(f"{path}: none of the features {', '.join(features)} was logged")
    return LearningRows(x=np.stack([cols[f] for f in used], axis=1),
                        correct=np.array(correct, dtype=bool), features=used, model=model,
                        tier=tier, data=str(path), texts=row_texts if texts else None)

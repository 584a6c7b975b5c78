"""Files of `eval` and `calibrate`: prompt sets, recorded outputs, labels, decision logs.

Every error names the file and the line (`data.jsonl:7: ...`), raised as `InputError`.

Prompt set (JSONL), one object a line:
    {"id": "q1", "prompt": "What is 2 + 2?", "reference": "4"}                  checked by
    {"id": "q2", "prompt": "...", "check": {"kind": "keywords", "groups": [...]}} a program
    {"prompt": "..."}                                       unlabelled: calibration only
Recorded outputs (`outputs.jsonl`, written by `router eval`): the prompt row plus
    "tiers": [{"tier", "model", "text", "finish_reason", "prompt_tokens", "completion_tokens",
               "cost_usd", "correct", "logprobs", "token_bytes", "top_logprobs",
               "features": {name: value}, "probe_costs": {probe: {"tokens", "seconds"}}}, ...]
in cascade order; a row without a check must carry each tier's "correct". `features` holds
the probe signals (router.probes) of every tier that can escalate; null is a missing value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import InputError
from router.evalset import EvalItem, check_answer, reference_check, validate_check
from router.scoring import TokenLogprobs


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; an empty file is an error."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    seen = 0
    with f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError:
                raise InputError(f"{path}:{lineno}: not UTF-8") from None
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got "
                                 f"{type(obj).__name__}")
            seen += 1
            yield lineno, obj
    if seen == 0:
        raise InputError(f"{path}: empty file: no rows")


def item_from_row(row: Mapping[str, Any], where: str, default_id: str,
                  *, require_label: bool) -> EvalItem:
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: a row needs a non-empty string 'prompt'")
    check = row.get("check")
    reference = row.get("reference")
    if check is not None:
        problem = validate_check(check)
        if problem:
            raise InputError(f"{where}: {problem}")
    elif reference is not None:
        if not isinstance(reference, str | int | float) or not str(reference).strip():
            raise InputError(f"{where}: 'reference' must be a non-empty string or number")
        check = reference_check(str(reference))
    elif require_label:
        raise InputError(f"{where}: unlabelled row: needs a 'reference' answer or a 'check' "
                         "(this command measures correctness)")
    max_tokens = row.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise InputError(f"{where}: max_tokens must be a positive integer")
    rid = row.get("id", default_id)
    return EvalItem(id=str(rid), prompt=prompt, check=dict(check) if check else None,
                    reference="" if reference is None else str(reference),
                    category=str(row.get("category", "")), max_tokens=max_tokens,
                    extra={"where": where})


def load_items(path: Path, *, require_label: bool) -> list[EvalItem]:
    """A prompt set. With `require_label`, every row must be checkable."""
    items = [item_from_row(row, f"{path}:{lineno}", f"{path.name}:{lineno}",
                           require_label=require_label)
             for lineno, row in read_jsonl(path)]
    _unique_ids(items)
    return items


def _unique_ids(items: Sequence[EvalItem]) -> None:
    seen: dict[str, str] = {}
    for it in items:
        where = str(it.extra.get("where", it.id))
        if it.id in seen:
            raise InputError(f"{where}: duplicate id {it.id!r} (first at {seen[it.id]})")
        seen[it.id] = where


@dataclass(frozen=True)
class TierOutput:
    tier: str
    model: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    logprobs: TokenLogprobs
    correct: bool
    error: str | None = None
    features: Mapping[str, float] = field(default_factory=dict)  # probe signals
    probe_costs: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # tokens, s
    samples: tuple[str, ...] = ()  # the consistency probe's sampled answers

    def to_json(self) -> dict[str, Any]:
        lp = self.logprobs
        out: dict[str, Any] = {
            "tier": self.tier, "model": self.model, "text": self.text,
            "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd,
            "correct": self.correct,
            "logprobs": [round(float(x), 5) for x in lp.logprobs],
            "token_bytes": [int(x) for x in lp.token_bytes],
            "top_logprobs": (None if lp.top_logprobs is None else
                             [[round(float(x), 5) for x in row] for row in lp.top_logprobs]),
        }
        if self.error:
            out["error"] = self.error
        if self.features:
            out["features"] = {k: (round(v, 6) if math.isfinite(v) else None)
                               for k, v in self.features.items()}
        if self.probe_costs:
            out["probe_costs"] = {k: {"tokens": t, "seconds": round(sec, 4)}
                                  for k, (t, sec) in self.probe_costs.items()}
        if self.samples:
            out["samples"] = list(self.samples)
        return out


@dataclass(frozen=True)
class Recorded:
    """One prompt and every tier's answer to it, in cascade order."""

    item: EvalItem
    outputs: tuple[TierOutput, ...]

    def to_json(self) -> dict[str, Any]:
        return {**self.item.to_json(), "tiers": [o.to_json() for o in self.outputs]}


def _float_list(value: Any, key: str, where: str) -> list[float]:
    if not isinstance(value, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise InputError(f"{where}: '{key}' must be a list of numbers")
    return [float(x) for x in value]


def _tier_output(raw: Any, item: EvalItem, where: str) -> TierOutput:
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: every entry of 'tiers' must be an object")
    name = raw.get("tier")
    text = raw.get("text")
    if not isinstance(name, str) or not name or not isinstance(text, str):
        raise InputError(f"{where}: a tier entry needs a string 'tier' and 'text'")
    w = f"{where}: tier {name}"
    lps = _float_list(raw.get("logprobs", []), "logprobs", w)
    nbytes = _float_list(raw.get("token_bytes", [1] * len(lps)), "token_bytes", w)
    if len(nbytes) != len(lps):
        raise InputError(f"{w}: 'token_bytes' must have one entry per logprob")
    top_raw = raw.get("top_logprobs")
    top = None
    if top_raw is not None:
        if not isinstance(top_raw, list) or len(top_raw) != len(lps):
            raise InputError(f"{w}: 'top_logprobs' must have one row per logprob")
        rows = [_float_list(r, "top_logprobs", w) for r in top_raw]
        top = rows
    if item.check is not None:
        correct = check_answer(item.check, text)
    else:
        label = raw.get("correct")
        if not isinstance(label, bool):
            raise InputError(f"{w}: unlabelled: the row has no 'check' or 'reference' and the "
                             "tier no boolean 'correct'")
        correct = label
    lp = (TokenLogprobs.from_lists(lps, [int(b) for b in nbytes], top) if lps else
          TokenLogprobs(np.zeros(0, np.float64), np.zeros(0, np.int64)))
    features, costs = _features(raw, w)
    samples = raw.get("samples") or []
    if not isinstance(samples, list) or not all(isinstance(x, str) for x in samples):
        raise InputError(f"{w}: 'samples' must be a list of strings")
    return TierOutput(
        tier=name, model=str(raw.get("model", name)), text=text,
        finish_reason=str(raw.get("finish_reason", "stop")),
        prompt_tokens=int(raw.get("prompt_tokens", 0)),
        completion_tokens=int(raw.get("completion_tokens", len(lps))),
        cost_usd=float(raw.get("cost_usd", 0.0)), logprobs=lp, correct=correct,
        error=raw.get("error"), features=features, probe_costs=costs, samples=tuple(samples))


def _features(raw: Mapping[str, Any], where: str
              ) -> tuple[dict[str, float], dict[str, tuple[int, float]]]:
    feats_raw = raw.get("features") or {}
    costs_raw = raw.get("probe_costs") or {}
    if not isinstance(feats_raw, Mapping) or not isinstance(costs_raw, Mapping):
        raise InputError(f"{where}: 'features' and 'probe_costs' must be objects")
    features: dict[str, float] = {}
    for k, v in feats_raw.items():
        if v is None:
            features[str(k)] = math.nan
        elif isinstance(v, int | float) and not isinstance(v, bool):
            features[str(k)] = float(v)
        else:
            raise InputError(f"{where}: features.{k} must be a number or null")
    costs: dict[str, tuple[int, float]] = {}
    for k, v in costs_raw.items():
        if not isinstance(v, Mapping) or not isinstance(v.get("tokens"), int) or not isinstance(
                v.get("seconds"), int | float):
            raise InputError(f"{where}: probe_costs.{k} must be {{tokens: int, seconds: n}}")
        costs[str(k)] = (int(v["tokens"]), float(v["seconds"]))
    return features, costs


def load_recorded(path: Path) -> list[Recorded]:
    """Recorded outputs; correctness is re-checked from the text wherever the row has a check."""
    out: list[Recorded] = []
    order: list[str] | None = None
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        item = item_from_row(row, where, f"{path.name}:{lineno}", require_label=False)
        tiers = row.get("tiers")
        if not isinstance(tiers, list) or len(tiers) < 2:
            raise InputError(f"{where}: 'tiers' must list at least two tiers' outputs "
                             "(tier 0 and a tier to escalate to)")
        outputs = tuple(_tier_output(t, item, where) for t in tiers)
        names = [o.tier for o in outputs]
        if order is None:
            order = names
        elif names != order:
            raise InputError(f"{where}: tiers {names} differ from the first row's {order}")
        out.append(Recorded(item, outputs))
    _unique_ids([r.item for r in out])
    return out


def load_recorded_files(paths: Sequence[Path]) -> list[Recorded]:
    """The recorded outputs of several files as one set: the same tiers in every file, ids
    unique across them."""
    out: list[Recorded] = []
    for path in paths:
        recs = load_recorded(path)
        if out and recs and [o.tier for o in recs[0].outputs] != [o.tier for o in
                                                                   out[0].outputs]:
            raise InputError(f"{path}: tiers {[o.tier for o in recs[0].outputs]} differ from "
                             f"{paths[0]}'s {[o.tier for o in out[0].outputs]}")
        out.extend(recs)
    _unique_ids([r.item for r in out])
    return out


def write_recorded(path: Path, records: Sequence[Recorded]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_items(path: Path, items: Sequence[EvalItem]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it.to_json(), ensure_ascii=False) + "\n")
    return path


LABEL_KEYS = ("correct", "acceptable", "label")


def parse_label(value: Any) -> bool | None:
    """true/false, 1/0, "good"/"bad", "yes"/"no" -> bool; anything else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "yes", "good", "correct", "acceptable", "1", "keep"):
            return True
        if v in ("false", "no", "bad", "wrong", "unacceptable", "0", "drop"):
            return False
    return None


def load_labels(path: Path, keys: Sequence[str] = LABEL_KEYS
                ) -> dict[str, tuple[bool, str]]:
    """{"id": ..., "correct": true|false} a line (any of `keys` names the label) ->
    {id: (label, "file:line")}. Answers use `correct`/`acceptable`/`label`; documents use
    `good`/`label`/`keep`/`correct` (router.evaluate.selection)."""
    out: dict[str, tuple[bool, str]] = {}
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        if "id" not in row:
            raise InputError(f"{where}: a label row needs an 'id'")
        key = next((k for k in keys if k in row), None)
        if key is None:
            raise InputError(f"{where}: unlabelled row: needs one of {', '.join(keys)}")
        label = parse_label(row[key])
        if label is None:
            raise InputError(f"{where}: '{key}' must be true/false or good/bad, got {row[key]!r}")
        rid = str(row["id"])
        if rid in out:
            raise InputError(f"{where}: duplicate id {rid!r} (first at {out[rid][1]})")
        out[rid] = (label, where)
    return out

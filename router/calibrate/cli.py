"""`router calibrate (--prompts FILE | --log DECISION_LOG) (--target-escalation R | --max-error E)
--policy-out policies/NAME.yaml`: fit a threshold policy and record where it came from.

`--prompts builtin` calibrates on the built-in evaluation set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from router.errors import InputError

DEFAULT_SIGNAL = "quantile_logprob_q0.1"


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "calibrate", help="fit a policy threshold to a target escalation rate or error bound",
        description="Score tier 0's answers (from sample prompts or a serve decision log), fit "
                    "the threshold, write a policy file with its provenance.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", metavar="FILE",
                     help="JSONL prompts ({'prompt': ...}, optional 'id', 'reference', 'check'); "
                          "'builtin' for the built-in evaluation set")
    src.add_argument("--log", type=Path, metavar="DECISION_LOG",
                     help="a `router serve` decision log (server.decision_log)")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-escalation", type=float, metavar="R",
                      help="escalate this fraction of traffic (0..1)")
    goal.add_argument("--max-error", type=float, metavar="E",
                      help="risk control: keep the error rate of accepted answers <= E")
    p.add_argument("--policy-out", type=Path, required=True, help="policy file to write")
    p.add_argument("--signal", help=f"scorer signal (default: the config's cascade policy "
                                    f"signal, else {DEFAULT_SIGNAL})")
    p.add_argument("--labels", type=Path,
                   help="JSONL {'id': ..., 'correct': true|false} (for --max-error; prompts "
                        "with a reference or check are labelled by it)")
    p.add_argument("--confidence", type=float, default=None,
                   help="with --max-error: hold a Wilson upper bound at this confidence "
                        "(e.g. 0.9) instead of the empirical error rate")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="answer length when running prompts (default: the config's "
                        "server.default_max_tokens, what traffic without max_tokens gets)")
    p.add_argument("--limit", type=int, default=None, help="use the first N prompts/records")
    p.add_argument("--seed", type=int, default=0, help="seed of --prompts builtin")
    p.add_argument("--name", help="policy name (default: the file's stem)")
    p.add_argument("--config", type=Path, default=None,
                   help="config file (default: the repo's config.yaml)")
    p.set_defaults(func=calibrate_main)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _default_signal(settings: Any) -> str:
    from router.errors import RouterError
    from router.policy import load_policy

    try:
        return load_policy(settings.resolve(settings.cascade.policy)).signal.key
    except RouterError:
        return DEFAULT_SIGNAL


def calibrate_main(args: argparse.Namespace) -> int:
    from router.backends import build_backend
    from router.calibrate.fit import fit_rate, fit_risk
    from router.calibrate.sources import (
        Scored,
        attach_labels,
        score_prompts,
        scores_from_log,
    )
    from router.config import load_settings
    from router.evalset import DEFAULT_SIZE, generate
    from router.evaluate.data import load_items, load_labels
    from router.policy import Policy, ThresholdRule, now_iso, save_policy
    from router.scoring import SCORER_VERSION, parse_signal_option

    if args.target_escalation is not None and not 0.0 <= args.target_escalation <= 1.0:
        raise InputError(f"--target-escalation must be in [0, 1], got {args.target_escalation}")
    if args.max_error is not None and not 0.0 <= args.max_error < 1.0:
        raise InputError(f"--max-error must be in [0, 1), got {args.max_error}")
    if args.confidence is not None and not 0.5 <= args.confidence < 1.0:
        raise InputError(f"--confidence must be in [0.5, 1), got {args.confidence}")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be positive, got {args.limit}")
    signal = parse_signal_option(args.signal) if args.signal else None
    labels = load_labels(args.labels) if args.labels is not None else None
    if args.log is not None and args.max_error is not None and labels is None:
        raise InputError("--max-error with --log needs --labels (which logged answers were "
                         "acceptable, by request id)")

    settings = None
    if args.log is not None:
        scored: Scored = scores_from_log(args.log, signal)
        if args.limit:
            scored = _head(scored, args.limit)
        data, max_tokens = str(args.log), None
    else:
        settings = load_settings(args.config)
        if args.prompts == "builtin":
            items = generate(args.seed, args.limit or DEFAULT_SIZE)
            data = f"builtin(seed={args.seed}, n={len(items)})"
        else:
            path = Path(args.prompts)
            items = load_items(path, require_label=False)[: args.limit]
            data = str(path)
        spec = signal or parse_signal_option(_default_signal(settings))
        max_tokens = args.max_tokens or settings.server.default_max_tokens
        backend = build_backend(settings.tiers[0], settings, os.environ)

        async def run() -> Scored:
            try:
                return await score_prompts(items, settings, backend, spec,
                                           max_tokens=max_tokens, log=_log)
            finally:
                await backend.aclose()

        scored = asyncio.run(run())

    calib: dict[str, Any] = {
        "data": data, "n": len(scored.ids), "model": scored.model, "tier": scored.tier,
        "signal": scored.signal.key, "scorer_version": SCORER_VERSION, "fitted_at": now_iso()}
    if max_tokens is not None:
        calib["max_tokens"] = max_tokens
    if args.target_escalation is not None:
        fit = fit_rate(scored.scores, args.target_escalation)
        calib.update(method="target_escalation", target_escalation=args.target_escalation,
                     escalation_on_data=round(fit.escalation_rate, 6))
    else:
        correct = attach_labels(scored, labels, args.labels)
        fit = fit_risk(scored.scores, correct, args.max_error, args.confidence)
        calib.update(method="risk_control", max_error=args.max_error,
                     confidence=args.confidence,
                     accepted_error=None if fit.accepted_error is None
                     else round(fit.accepted_error, 6),
                     escalation_on_data=round(fit.escalation_rate, 6),
                     labels=str(args.labels) if args.labels else "prompt checks")
    calib["threshold"] = fit.threshold
    name = args.name or args.policy_out.stem
    policy = Policy(name=name, signal=scored.signal,
                    rule=ThresholdRule(escalate_below=fit.threshold), calibration=calib)
    save_policy(policy, args.policy_out)

    print(f"calibrated {scored.signal.key} of {scored.model} on {len(scored.ids)} answers "
          f"({data}{f', {scored.skipped} log records skipped' if scored.skipped else ''})")
    print(f"  threshold: escalate_below {fit.threshold:.6g}")
    print(f"  escalation on this data: {fit.escalation_rate:.3f}"
          + (f" (target {args.target_escalation})" if args.target_escalation is not None else ""))
    if args.max_error is not None:
        err = "n/a (escalates everything)" if fit.accepted_error is None \
            else f"{fit.accepted_error:.3f}"
        bound = "" if args.confidence is None or fit.error_bound is None \
            else f", {args.confidence:.0%} upper bound {fit.error_bound:.3f}"
        print(f"  accepted-answer error: {err} (bound {args.max_error}{bound}); "
              f"this costs escalating {fit.escalation_rate:.1%} of traffic")
    print(f"  policy written to {args.policy_out}")
    return 0


def _head(scored: Any, n: int) -> Any:
    from dataclasses import replace

    return replace(scored, scores=scored.scores[:n], ids=scored.ids[:n], where=scored.where[:n],
                   correct=scored.correct[:n])

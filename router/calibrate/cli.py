"""`router calibrate (--prompts FILE | --log DECISION_LOG | --recorded OUTPUTS)
(--target-escalation R | --max-error E) --policy-out policies/NAME.yaml [--learn]`: fit a
policy and record where it came from.

`--prompts builtin` calibrates on the built-in evaluation set. `--learn` fits a learned rule
(logistic regression over several signals and probes, router.learned) on labelled answers
(prompts with checks, a `router eval` outputs.jsonl, or a decision log with --labels) before
its threshold is fitted the same way.
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
                          "'builtin' or 'heldout' for a generated evaluation set")
    src.add_argument("--log", type=Path, metavar="DECISION_LOG",
                     help="a `router serve` decision log (server.decision_log)")
    src.add_argument("--recorded", type=Path, metavar="OUTPUTS", nargs="+",
                     help="`router eval` outputs.jsonl files (tier 0's answers, probes, "
                          "checks); several are fitted on as one set (ids unique across them, "
                          "the same tiers)")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-escalation", type=float, metavar="R",
                      help="escalate this fraction of traffic (0..1)")
    goal.add_argument("--max-error", type=float, metavar="E",
                      help="risk control: keep the error rate of accepted answers <= E")
    p.add_argument("--policy-out", type=Path, required=True, help="policy file to write")
    p.add_argument("--signal", help=f"scorer signal (default: the config's cascade policy "
                                    f"signal when it is one scorer signal, else "
                                    f"{DEFAULT_SIGNAL}; see --learn for a learned rule)")
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
    learn = p.add_argument_group("learned rule", "fit a logistic regression over many signals")
    learn.add_argument("--learn", action="store_true",
                       help="fit a learned rule instead of thresholding one signal")
    learn.add_argument("--features", default=None,
                       help="comma-separated signals and probes (default: every token-logprob "
                            "quantile and signal plus verify_p_yes, consistency, "
                            "prompt_logprob_per_byte, answer_tokens, truncated)")
    learn.add_argument("--C", dest="reg_c", type=float, default=None,
                       help="inverse L2 regularisation strength (default 0.1)")
    learn.add_argument("--folds", type=int, default=None,
                       help="cross-validation folds for the reported AUROC (default 5)")
    learn.add_argument("--text", default="none",
                       help="words the rule learns from as well: question, answer, "
                            "question,answer or none (default none; with text, --C defaults "
                            "to 3.0). Needs the question and answer of every row: --recorded, "
                            "--prompts, or a log written with decision_log.include_prompt")
    learn.add_argument("--learn-target", choices=("correct", "gain"), default="correct",
                       help="what the rule predicts: 'correct' (tier 0's answer is right) or "
                            "'gain' (escalating would not fix it: tier 0 right or the last "
                            "tier wrong too; ranks the answers whose escalation pays first; "
                            "needs both tiers' labels: --recorded)")
    learn.add_argument("--exclude-prompts", type=Path, default=None, metavar="FILE",
                       nargs="+",
                       help="leave out rows whose prompt is also in one of these files "
                            "(router eval outputs or prompts, JSONL): fit without the prompts "
                            "you will evaluate the rule on")
    learn.add_argument("--text-scale", type=float, default=None,
                       help="weight of the text terms against the standardised features "
                            "(default 3.0)")
    p.add_argument("--config", type=Path, default=None,
                   help="config file (default: the repo's config.yaml)")
    p.set_defaults(func=calibrate_main)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _default_signal(settings: Any) -> str:
    from router.errors import RouterError
    from router.policy import load_policy

    try:
        policy = load_policy(settings.resolve(settings.cascade.policy))
        return policy.token_signal.key  # a learned policy: calibrate one signal by default
    except RouterError:
        return DEFAULT_SIGNAL


def calibrate_main(args: argparse.Namespace) -> int:
    from router.backends import build_backend
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

    if args.learn:
        return _learn_main(args, labels)
    if args.recorded is not None:
        raise InputError("--recorded needs --learn (a single signal calibrates from "
                         "--prompts or --log)")
    settings = None
    if args.log is not None:
        scored: Scored = scores_from_log(args.log, signal)
        if args.limit:
            scored = _head(scored, args.limit)
        data, max_tokens = str(args.log), None
    else:
        settings = load_settings(args.config)
        if args.prompts in ("builtin", "heldout"):
            from router.evalset.heldout import generate_heldout

            make = generate if args.prompts == "builtin" else generate_heldout
            items = make(args.seed, args.limit or DEFAULT_SIZE)
            data = f"{args.prompts}(seed={args.seed}, n={len(items)})"
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
    labelled = (None if args.target_escalation is not None
                else attach_labels(scored, labels, args.labels))
    fit = _fit_threshold(args, scored.scores, labelled, calib)
    if args.max_error is not None:
        calib["labels"] = str(args.labels) if args.labels else "prompt checks"
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


def _learn_main(args: argparse.Namespace, labels: dict[str, tuple[bool, str]] | None) -> int:
    """Fit a learned rule on labelled tier-0 answers, then its threshold."""
    from router.calibrate.sources import learning_rows
    from router.learned_fit import (
        DEFAULT_C,
        DEFAULT_FEATURES,
        DEFAULT_FOLDS,
        DEFAULT_TEXT_C,
        TextFit,
        fit_learned,
    )
    from router.policy import Policy, ThresholdRule, now_iso, save_policy
    from router.scoring import SCORER_VERSION
    from router.text_features import DEFAULT_TEXT_SCALE

    features = (tuple(f.strip() for f in args.features.split(",") if f.strip())
                if args.features else DEFAULT_FEATURES)
    folds = args.folds or DEFAULT_FOLDS
    fields = () if args.text.strip() in ("", "none") else tuple(
        f.strip() for f in args.text.split(",") if f.strip())
    scale = DEFAULT_TEXT_SCALE if args.text_scale is None else args.text_scale
    if scale <= 0:
        raise InputError(f"--text-scale must be positive, got {scale}")
    text = TextFit(fields, scale=scale)
    c = args.reg_c or (DEFAULT_TEXT_C if fields else DEFAULT_C)
    if folds < 2:
        raise InputError(f"--folds must be at least 2, got {folds}")
    if c <= 0:
        raise InputError(f"--C must be positive, got {c}")
    rows = learning_rows(args, labels, features, log=_log, texts=bool(fields))
    meta = {"model": rows.model, "tier": rows.tier, "scorer_version": SCORER_VERSION,
            "data": rows.data, "target": args.learn_target}
    target = rows.correct
    if args.learn_target == "gain":
        if rows.no_gain is None:
            raise InputError("--learn-target gain needs the last tier's labels too: fit on "
                             "--recorded (router eval's outputs.jsonl)")
        target = rows.no_gain
    groups = [t["question"] for t in rows.texts] if rows.texts is not None else None
    fit = fit_learned(rows.x, target, rows.features, c=c, folds=folds, meta=meta,
                      texts=rows.texts, text=text, groups=groups)
    # the threshold is fitted on out-of-fold scores: what the rule gives answers it has not
    # seen (in-sample scores of a rule with text terms are overconfident)
    scores = fit.cv_scores
    calib: dict[str, Any] = {"data": rows.data, "n": len(rows.correct), "model": rows.model,
                             "tier": rows.tier, "signal": "learned",
                             "scorer_version": SCORER_VERSION, "fitted_at": now_iso(),
                             "cv_auroc": round(fit.cv_auroc, 6)}
    if rows.max_tokens is not None:
        calib["max_tokens"] = rows.max_tokens
    tfit = _fit_threshold(args, scores, rows.correct, calib)
    calib["threshold"] = tfit.threshold
    name = args.name or args.policy_out.stem
    policy = Policy(name=name, signal=fit.signal,
                    rule=ThresholdRule(escalate_below=tfit.threshold), calibration=calib)
    save_policy(policy, args.policy_out)
    words = f" and the words of the {' and the '.join(fields)}" if fields else ""
    print(f"learned a rule over {len(rows.features)} features{words} of {rows.model} on "
          f"{len(rows.correct)} labelled answers ({rows.data}; {int(rows.correct.sum())} "
          "correct)")
    what = ("tier 0's answer is right" if args.learn_target == "correct"
            else "escalating gains nothing")
    print(f"  cross-validated AUROC ({folds} folds) of '{what}': {fit.cv_auroc:.3f}  "
          f"(in-sample {fit.train_auroc:.3f})")
    top = sorted(zip(rows.features, fit.signal.weights, strict=True), key=lambda fw: -abs(fw[1]))
    print("  weights (standardised): " + ", ".join(f"{f} {w:+.2f}" for f, w in top))
    for block in fit.signal.text:
        ranked = sorted(block.weights.items(), key=lambda tw: tw[1])
        print(f"  {block.field} terms: toward escalating " + ", ".join(
            f"{t!r} {w:+.2f}" for t, w in ranked[:4]) + "; toward keeping " + ", ".join(
            f"{t!r} {w:+.2f}" for t, w in ranked[::-1][:4]))
    print(f"  threshold: escalate_below {tfit.threshold:.6g} (log-odds that {what}, "
          f"fitted on the out-of-fold scores); escalation on this data: "
          f"{tfit.escalation_rate:.3f}")
    print(f"  policy written to {args.policy_out}")
    return 0


def _fit_threshold(args: argparse.Namespace, scores: Any, correct: Any,
                   calib: dict[str, Any]) -> Any:
    """The threshold for --target-escalation or --max-error, its figures added to `calib`."""
    from router.calibrate.fit import fit_rate, fit_risk

    if args.target_escalation is not None:
        fit = fit_rate(scores, args.target_escalation)
        calib.update(method="target_escalation", target_escalation=args.target_escalation,
                     escalation_on_data=round(fit.escalation_rate, 6))
        return fit
    fit = fit_risk(scores, correct, args.max_error, args.confidence)
    calib.update(method="risk_control", max_error=args.max_error, confidence=args.confidence,
                 accepted_error=None if fit.accepted_error is None
                 else round(fit.accepted_error, 6),
                 escalation_on_data=round(fit.escalation_rate, 6))
    return fit

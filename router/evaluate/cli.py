"""`router eval [--data FILE | --recorded FILE] --out DIR`: measure a cascade on labelled prompts
(the built-in set by default), and `router eval --selection LABELS --scores PARQUET` for a
selection policy.

Writes DIR/outputs.jsonl (every tier's answers, re-evaluable with --recorded), DIR/eval.json
and DIR/plot.html, and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from router.errors import InputError


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "eval", help="measure a cascade: AUROC, deferral curve, PGR, cost per signal",
        description="Run every tier on labelled prompts (default: the built-in set), or read "
                    "their recorded outputs, and compare every confidence signal of tier 0.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path,
                     help="JSONL prompts with a 'reference' or 'check' each")
    src.add_argument("--recorded", type=Path, help="an earlier run's outputs.jsonl")
    p.add_argument("--out", type=Path, help="output directory")
    p.add_argument("--config", type=Path, default=None,
                   help="config file (default: the repo's config.yaml)")
    p.add_argument("--limit", type=int, default=None, help="the first N prompts only")
    p.add_argument("--seed", type=int, default=None, help="seed of the built-in set (0)")
    p.add_argument("--set", dest="evalset", choices=("builtin", "heldout"), default="builtin",
                   help="which generated set without --data: builtin (arithmetic, units, "
                        "strings, capitals, support) or heldout (word problems, facts, yes/no, "
                        "letters, other support intents), to test generalisation")
    p.add_argument("--cv", type=int, default=None, metavar="K",
                   help="also fit learned rules on this data and report their K-fold "
                        "out-of-fold signals (learned_cvK; with words of the question and "
                        "answer, learned_text_cvK; with the gain target, "
                        "learned_text_gain_cvK): each prompt scored by rules that never saw "
                        "it (folds grouped by prompt, repeated 5 times)")
    p.add_argument("--rerun-tier", type=int, default=None, metavar="T",
                   help="with --recorded: answer (and probe) again with tier T only, keep the "
                        "other tiers' recorded answers")
    p.add_argument("--no-probes", action="store_true",
                   help="do not run the confidence probes (verification, sampling, prompt "
                        "familiarity) when running the models")
    p.add_argument("--size", type=int, default=None, help="size of the built-in set (80)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="answer length (default 24; rows may set their own max_tokens)")
    p.add_argument("--signal", action="append",
                   help="evaluate only these signals (repeatable; default: all)")
    p.add_argument("--rates", default="0.1,0.2,0.3,0.5",
                   help="escalation rates for PGR and cost (default 0.1,0.2,0.3,0.5)")
    sel = p.add_argument_group("selection", "measure a selection policy instead")
    sel.add_argument("--selection", type=Path, metavar="LABELS",
                     help="JSONL {'id': ..., 'good': true|false} of documents")
    sel.add_argument("--scores", type=Path, metavar="PARQUET",
                     help="a `router select` scores.parquet (or its output directory)")
    p.add_argument("--policy", type=Path, action="append",
                   help="a policy file whose own signal is reported beside every single "
                        "signal (repeatable); with --selection, the selection policy")
    sel.add_argument("--keep-fraction", type=float, metavar="F",
                     help="instead of --policy: keep the top fraction F by --signal")
    p.set_defaults(func=eval_main)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--rates: expected comma-separated numbers, got {text!r}") from None
    if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
        raise InputError(f"--rates: every rate must be in [0, 1], got {text!r}")
    return rates


def eval_main(args: argparse.Namespace) -> int:
    if args.selection is not None or args.scores is not None:
        return _selection_main(args)
    if args.out is None:
        raise InputError("--out DIR is required")
    from router.evalset import DEFAULT_MAX_TOKENS, DEFAULT_SEED, DEFAULT_SIZE, generate
    from router.evalset.heldout import generate_heldout
    from router.evaluate.data import load_items, load_recorded, write_recorded
    from router.evaluate.report import EVAL_SIGNALS, evaluate, format_table, plot_html
    from router.policy import load_policy
    from router.probes import probe_settings
    from router.scoring import parse_signal_option

    rates = _rates(args.rates)
    specs = tuple(parse_signal_option(s) for s in args.signal) if args.signal else EVAL_SIGNALS
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be positive, got {args.limit}")
    out: Path = args.out
    outputs = out / "outputs.jsonl"
    if args.rerun_tier is not None and args.recorded is None:
        raise InputError("--rerun-tier needs --recorded")
    if args.recorded is not None and args.rerun_tier is not None:
        from router.backends import build_backend
        from router.config import load_settings
        from router.evaluate.run import rerun_tier

        records = load_recorded(args.recorded)[: args.limit]
        data = str(args.recorded)
        settings = load_settings(args.config)
        if not 0 <= args.rerun_tier < len(settings.tiers):
            raise InputError(f"--rerun-tier: the config has tiers 0..{len(settings.tiers) - 1}")
        tier_cfg = settings.tiers[args.rerun_tier]
        backend = build_backend(tier_cfg, settings, os.environ)

        async def rerun() -> Any:
            try:
                probes = None if args.no_probes else probe_settings(settings.cascade.probes)
                return await rerun_tier(records, args.rerun_tier, settings, backend,
                                        max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS,
                                        probes=probes, log=_log)
            finally:
                await backend.aclose()

        write_recorded(outputs, asyncio.run(rerun()))
        records = load_recorded(outputs)
    elif args.recorded is not None:
        records = load_recorded(args.recorded)[: args.limit]
        data = str(args.recorded)
    else:
        from router.backends import build_backends
        from router.config import load_settings
        from router.evaluate.run import run_tiers

        settings = load_settings(args.config)
        if len(settings.tiers) < 2:
            raise InputError(f"{settings.source}: eval needs at least two tiers")
        if args.data is not None:
            items = load_items(args.data, require_label=True)[: args.limit]
            data = str(args.data)
        else:
            seed = DEFAULT_SEED if args.seed is None else args.seed
            make = generate_heldout if args.evalset == "heldout" else generate
            items = make(seed, args.limit or args.size or DEFAULT_SIZE)
            data = f"{args.evalset}(seed={seed}, n={len(items)})"
        backends = build_backends(settings, os.environ)

        async def run() -> Any:
            try:
                probes = None if args.no_probes else probe_settings(settings.cascade.probes)
                return await run_tiers(items, settings, backends,
                                       max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS,
                                       probes=probes, log=_log)
            finally:
                for b in backends.values():
                    await b.aclose()

        write_recorded(outputs, asyncio.run(run()))
        records = load_recorded(outputs)  # the figures come from exactly what was recorded
    if not records:
        raise InputError("no prompts to evaluate")
    policies = [load_policy(p).for_serving() for p in args.policy or ()]
    if args.cv is not None and args.cv < 2:
        raise InputError(f"--cv must be at least 2, got {args.cv}")
    report = evaluate(records, specs=specs, rates=rates, data=data, policies=policies,
                      cv_folds=args.cv)
    out.mkdir(parents=True, exist_ok=True)
    if (args.recorded is not None and args.rerun_tier is None
            and args.recorded.resolve() != outputs.resolve()):
        write_recorded(outputs, records)
    (out / "eval.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "plot.html").write_text(plot_html(report), encoding="utf-8")
    print(format_table(report))
    print(f"\nwrote {out / 'eval.json'}, {out / 'plot.html'}, {outputs}")
    return 0


def _selection_main(args: argparse.Namespace) -> int:
    from router.evaluate.selection import evaluate_selection, format_selection
    from router.policy import Policy, TopFractionRule, load_policy
    from router.scoring import SignalSpec, parse_signal_option

    if args.selection is None or args.scores is None:
        raise InputError("selection evaluation needs both --selection LABELS and --scores PARQUET")
    if (args.policy is None) == (args.keep_fraction is None):
        raise InputError("selection evaluation needs exactly one of --policy and --keep-fraction")
    scores = args.scores / "scores.parquet" if args.scores.is_dir() else args.scores
    if not scores.exists():
        raise InputError(f"{scores}: no such file")
    if args.policy is not None and len(args.policy) > 1:
        raise InputError("selection evaluation takes one --policy")
    if args.policy is not None:
        policy = load_policy(args.policy[0])
        if args.signal:
            policy = Policy(policy.name, parse_signal_option(args.signal[0]), policy.rule,
                            policy.calibration, policy.source)
    else:
        if not 0.0 < args.keep_fraction <= 1.0:
            raise InputError(f"--keep-fraction must be in (0, 1], got {args.keep_fraction}")
        spec = parse_signal_option(args.signal[0]) if args.signal else SignalSpec(
            "logprob_per_byte")
        policy = Policy(f"top-{args.keep_fraction:g}", spec,
                        TopFractionRule(keep=args.keep_fraction))
    report = evaluate_selection(scores, args.selection, policy)
    print(format_selection(report))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "selection.json").write_text(json.dumps(report, indent=1) + "\n",
                                                 encoding="utf-8")
        print(f"\nwrote {args.out / 'selection.json'}")
    return 0

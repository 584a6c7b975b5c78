"""`router select INPUT... --out DIR [policy] [options]`: the command line of the pipeline.

Kept light at import time: `router.cli` imports this module to add the subcommand; the
pipeline (pyarrow, the backends) is imported only when `select` runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_POLICY_SIGNAL = "logprob_per_byte"


def add_select_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "select", help="score, filter and prioritise a training corpus with the weak model",
        description="Score every record with the small model, cut by a policy, and write "
                    "kept/ and dropped/ shards, scores.parquet, rejected.jsonl, stats.json "
                    "and report.html to --out.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="JSONL (.gz/.zst), Parquet or text files, directories or globs")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--policy", type=Path, help="a policy file (policies/*.yaml)")
    rule.add_argument("--keep-fraction", type=float, metavar="F",
                      help="keep the top fraction F by the signal")
    rule.add_argument("--band", type=float, nargs=2, metavar=("LO", "HI"),
                      help="keep signal quantiles LO..HI")
    rule.add_argument("--threshold", type=float, metavar="X", help="keep records scoring >= X")
    rule.add_argument("--criterion", choices=("low", "medium", "high"),
                      help="perplexity band of Ankner et al. (keeps --keep of the corpus, "
                           "default 0.5)")
    p.add_argument("--keep", type=float, default=0.5,
                   help="fraction kept by --criterion or a difference rule (default 0.5)")
    p.add_argument("--signal", default=None,
                   help=f"scorer signal (default {DEFAULT_POLICY_SIGNAL}: log-likelihood per "
                        "byte, i.e. -bits per byte x ln 2)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--id-field", default="id")
    p.add_argument("--text-format", choices=("lines", "file"), default="lines",
                   help="plain-text inputs: one record per line, or per file")
    p.add_argument("--model", help="tier that scores (default: select.model in the config)")
    p.add_argument("--reference", help="second tier: rank by model minus reference "
                                       "(Moore-Lewis difference)")
    p.add_argument("--weights", choices=("tier", "file", "f16", "f32"),
                   help="what an embedded scoring tier computes with: f16 (default: select."
                        "weights of the config) widens the GGUF's tensors for a GEMM, about 2x "
                        "faster than the packaged Q4_1 file; file: the GGUF as it is; tier: "
                        "the tier's own weights")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", help="an existing Ray cluster, e.g. 127.0.0.1:6379 "
                                         "(default: start one locally)")
    p.add_argument("--ray-num-cpus", type=int, metavar="N",
                   help="Ray workers (one model each; default: every CPU of the cluster)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (finished parts are not rescored)")
    p.add_argument("--order", choices=("input", "score"), default="input",
                   help="score: kept shards sorted by the signal, highest first")
    p.add_argument("--stratify", metavar="FIELD", help="cut points per value of FIELD")
    p.add_argument("--from-scores", type=Path, metavar="PATH",
                   help="re-cut an earlier DIR/scores.parquet without rescoring")
    p.add_argument("--shard-size", type=int, default=None,
                   help="records per output shard (default 10000)")
    p.add_argument("--checkpoint-records", type=int, metavar="N",
                   help="save scores every N scored records (default: select."
                        "checkpoint_records of the config, 256)")
    p.add_argument("--checkpoint-seconds", type=float, metavar="S",
                   help="... or every S seconds, whichever comes first (default: select."
                        "checkpoint_seconds, 30)")
    p.add_argument("--duplicate-ids", choices=("keep-first", "reject"), default="keep-first",
                   help="records sharing an id: keep the first and reject the others "
                        "(default), or reject them all; reported in stats.json either way")
    p.add_argument("--config", type=Path, help="config file (default: the repo's config.yaml)")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    p.add_argument("--metrics-textfile", type=Path, metavar="PATH",
                   help="write Prometheus metrics (documents by decision, tokens scored) to "
                        "this file, for node exporter's textfile collector")
    p.add_argument("--pushgateway", metavar="URL",
                   help="push the same metrics to a Prometheus push gateway")
    p.set_defaults(func=select_main)
    return p


def _policy(args: argparse.Namespace) -> Any:
    from router.policy import (
        BandRule,
        DifferenceRule,
        Policy,
        ThresholdRule,
        TopFractionRule,
        band_for_criterion,
        load_policy,
        rule_from_dict,
    )
    from router.scoring import SignalSpec

    if args.policy is not None:
        policy = load_policy(args.policy)
        if args.signal:
            policy = Policy(policy.name, SignalSpec.parse(args.signal), policy.rule,
                            policy.calibration, policy.source)
    else:
        signal = SignalSpec.parse(args.signal or DEFAULT_POLICY_SIGNAL)
        rule: Any
        if args.keep_fraction is not None:
            rule = rule_from_dict({"kind": "top_fraction", "keep": args.keep_fraction},
                                  "--keep-fraction")
        elif args.band is not None:
            rule = rule_from_dict({"kind": "band", "keep_quantiles": list(args.band)}, "--band")
        elif args.threshold is not None:
            rule = ThresholdRule(keep_above=float(args.threshold))
        elif args.criterion is not None:
            rule = BandRule(keep_quantiles=band_for_criterion(args.criterion, args.keep),
                            criterion=args.criterion)
        elif args.reference is not None:
            rule = DifferenceRule(reference=args.reference, keep=args.keep)
        else:
            rule = TopFractionRule(keep=args.keep)
        policy = Policy(name="cli", signal=signal, rule=rule, source="command line")
    if args.reference is not None and not isinstance(policy.rule, DifferenceRule):
        rule = policy.rule
        keep = rule.keep if isinstance(rule, TopFractionRule) else args.keep
        above = rule.keep_above if isinstance(rule, ThresholdRule) else None
        policy = Policy(policy.name, policy.signal,
                        DifferenceRule(reference=args.reference,
                                       keep=None if above is not None else keep,
                                       keep_above=above),
                        policy.calibration, policy.source)
    return policy.for_selection()


def select_main(args: argparse.Namespace) -> int:
    from router.errors import RouterError

    try:
        from router.select.options import DEFAULT_SHARD_SIZE, ReadOptions, SelectOptions
        from router.select.pipeline import run_select

        if not args.inputs and args.from_scores is None:
            raise _usage("give at least one INPUT, or --from-scores PATH")
        for flag in ("shard_size", "checkpoint_records", "checkpoint_seconds", "ray_num_cpus"):
            value = getattr(args, flag)
            if value is not None and value <= 0:
                raise _usage(f"--{flag.replace('_', '-')} must be positive")
        opts = SelectOptions(
            inputs=tuple(args.inputs), out=args.out, policy=_policy(args),
            read=ReadOptions(text_field=args.text_field, id_field=args.id_field,
                             text_format=args.text_format, stratify=args.stratify),
            model=args.model, reference=args.reference, weights=args.weights,
            engine=args.engine,
            resume=args.resume, order_by_score=args.order == "score",
            from_scores=args.from_scores, config=args.config,
            shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
            duplicate_ids=args.duplicate_ids, checkpoint_records=args.checkpoint_records,
            checkpoint_seconds=args.checkpoint_seconds,
            progress=False if args.no_progress else None, ray_address=args.ray_address,
            ray_num_cpus=args.ray_num_cpus,
            metrics_textfile=args.metrics_textfile, pushgateway=args.pushgateway)
        run_select(opts)
    except RouterError as exc:
        print(f"router select: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nrouter select: interrupted; finished parts are saved: rerun with --resume "
              f"--out {args.out} to continue", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"router select: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _usage(message: str) -> Exception:
    from router.errors import InputError

    return InputError(message)


def main(argv: list[str] | None = None) -> int:
    """`python -m router.select.cli ...` (the same as `router select ...`)."""
    parser = argparse.ArgumentParser(prog="router")
    sub = parser.add_subparsers(dest="command", required=True)
    add_select_parser(sub)
    args = parser.parse_args(["select", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

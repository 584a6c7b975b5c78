"""`router serve | select | calibrate | eval | score | models` — the one entry point.

Every RouterError becomes one clear line on stderr and a non-zero exit, never a traceback.
This is the only module that reads the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from router.errors import InputError, RouterError

EXIT_ERROR = 2


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=None, help="config file (default: the repo's config.yaml)"
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _read_score_inputs(items: Sequence[str]) -> list[tuple[str, str]]:
    """TEXT | - | FILE -> [(label, text)]; a FILE is one text; `-` reads stdin, a text a line."""
    out: list[tuple[str, str]] = []
    for item in items:
        if item == "-":
            raw = sys.stdin.buffer.read()
            try:
                data = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"stdin: invalid UTF-8 at byte {exc.start}") from None
            for i, line in enumerate(data.splitlines(), start=1):
                out.append((f"stdin:{i}", line))
            continue
        path = Path(item)
        if path.is_file():
            try:
                out.append((str(path), path.read_bytes().decode("utf-8")))
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}: invalid UTF-8 at byte {exc.start}") from None
        else:
            out.append(("arg", item))
    for label, text in out:
        if not text.strip():
            raise InputError(f"{label}: empty text: nothing to score")
    return out


def cmd_score(args: argparse.Namespace) -> int:
    from router.backends import build_backend
    from router.config import load_settings
    from router.scoring import DEFAULT_SIGNALS, SignalSpec, score_sequences

    settings = load_settings(args.config)
    tier = settings.tier(args.model) if args.model else settings.tiers[0]
    inputs = _read_score_inputs(args.text)
    specs = list(DEFAULT_SIGNALS)
    for q in args.quantile or []:
        specs.append(SignalSpec("quantile_logprob", q=q))
    backend = build_backend(tier, settings, os.environ)

    async def run() -> Any:
        try:
            return await backend.score([t for _, t in inputs], top_k=args.top_k)
        finally:
            await backend.aclose()

    seqs = asyncio.run(run())
    result = score_sequences(backend.model_id, seqs, specs)
    for i, (label, _) in enumerate(inputs):
        row = {
            "input": label,
            "tier": tier.name,
            **{k: _json_safe(v) for k, v in result.row(i).items()},
        }
        if args.tokens:
            row["tokens"] = [
                [t, round(float(lp), 4)]
                for t, lp in zip(seqs[i].tokens or (), seqs[i].logprobs, strict=False)
            ]
        print(json.dumps(row, ensure_ascii=False))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from router.backends import build_backend
    from router.config import load_settings

    settings = load_settings(args.config)
    failures = 0

    async def check_all() -> list[tuple[str, str, str]]:
        rows = []
        for tier in settings.tiers:
            backend = build_backend(tier, settings, os.environ)
            try:
                await backend.check()
                status = "ok"
            except RouterError as exc:
                status = f"unavailable: {exc.message}"
            finally:
                await backend.aclose()
            where = tier.base_url if tier.backend == "openai_http" else tier.model
            rows.append((tier.name, f"{tier.backend}:{where}", status))
        return rows

    for name, where, status in asyncio.run(check_all()):
        failures += status != "ok"
        print(f"{name:<12} {where:<48} {status}")
    return 1 if failures else 0


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        fn: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), func)
        return fn(args)

    return run


def _workers_arg(value: str) -> int | str:
    """`--workers`: a positive integer or `auto`."""
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="router",
        description="Cascade router: answer with a small model, escalate when it is unsure; "
        "score and select training data with the same scorer.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="print every likelihood signal of a text as JSON")
    p.add_argument("text", nargs="+", help="a text, a file (one text), or - (stdin, one a line)")
    p.add_argument("--model", help="tier name or model id (default: the first tier)")
    p.add_argument(
        "--quantile",
        type=float,
        action="append",
        help="also report quantile_logprob at this q (repeatable)",
    )
    p.add_argument("--tokens", action="store_true", help="also print per-token logprobs")
    p.add_argument(
        "--top-k",
        type=int,
        default=5,
        help="top-k per position for the entropy and margin signals (0: skip)",
    )
    _config_arg(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("models", help="list tiers and whether each is loadable/reachable")
    _config_arg(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("serve", help="run the OpenAI-compatible cascade router")
    _config_arg(p)
    p.add_argument("--host", default=None, help="bind address (default: config, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: config, 8000)")
    p.add_argument("--workers", type=_workers_arg, default=None, metavar="N|auto",
                   help="worker processes on one socket (default: config server.workers, 1; "
                   "auto: one per CPU this process may use)")
    p.set_defaults(func=_lazy("router.serve.run", "serve_main"))

    # the other commands register themselves (their modules import their heavy parts lazily)
    from router.calibrate.cli import add_parser as add_calibrate_parser
    from router.evaluate.cli import add_parser as add_eval_parser
    from router.select.cli import add_select_parser

    add_select_parser(sub)
    add_calibrate_parser(sub)
    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except RouterError as exc:
        first, *rest = exc.message.splitlines() or [type(exc).__name__]
        print(f"router {args.command}: error: {first}", file=sys.stderr)
        for line in rest:
            print(f"  {line}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"router {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

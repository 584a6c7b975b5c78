"""`router` with the garbage collector watched, for `bench/gc_pauses.py`.

    GC_PROBE_OUT=stats.json python bench/_gc_probe.py serve --config FILE ...

Runs the router's CLI in this process; once `router serve` has tuned the collector
(`router.serve.run.tune_gc`: start-up's own collections do not count) every collection's
generation and pause are noted, and written to GC_PROBE_OUT as JSON when the process exits.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import router.serve.run as serve_run
from router.cli import main

_started: dict[int, float] = {}
_pauses: list[tuple[int, float, int]] = []  # (generation, seconds, objects collected)
_watching = False


def _watch(phase: str, info: dict[str, Any]) -> None:
    if not _watching:
        return
    generation = info["generation"]
    if phase == "start":
        _started[generation] = time.perf_counter()
    else:
        _pauses.append((generation, time.perf_counter() - _started[generation],
                        info["collected"]))


def _tuned() -> None:
    global _watching
    _tune()
    _watching = True


def _write() -> None:
    out = os.environ.get("GC_PROBE_OUT")
    if not out:
        return
    by_gen = [sum(1 for g, _, _ in _pauses if g == gen) for gen in range(3)]
    Path(out).write_text(json.dumps({
        "collections": by_gen,
        "pause_s_total": round(sum(s for _, s, _ in _pauses), 4),
        "pause_ms_max": round(max((s for _, s, _ in _pauses), default=0.0) * 1e3, 2),
        "objects_collected": sum(n for _, _, n in _pauses),
    }))


_tune = serve_run.tune_gc
serve_run.tune_gc = _tuned
gc.callbacks.append(_watch)
atexit.register(_write)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

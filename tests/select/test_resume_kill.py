from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from select_helpers import FakeBackend, shard_rows
from test_pipeline import three_shards

from router.select.options import ReadOptions

RUNNER = Path(__file__).with_name("_kill_runner.py")


def test_kill_9_then_resume(tmp_path: Path, run_fake: Callable[..., dict[str, Any]]) -> None:
    inputs = three_shards(tmp_path)
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, str(RUNNER), str(out), *map(str, inputs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_dir = out / "_work" / "done"
    deadline = time.monotonic() + 60
    while len(list(done_dir.glob("*.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no part finished in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stderr:
        proc.stderr.close()
    done = sorted((out / "_work" / "done").glob("*.json"))
    assert done and not (out / "stats.json").exists()
    already = sum(json.loads(p.read_text())["records"] for p in done)
    second = FakeBackend()
    stats = run_fake(inputs, out, backends={"small": second}, shard_size=4, resume=True,
                     read=ReadOptions(batch_size=4))
    # finished parts are not rescored (the one rejected-by-scorer text may be retried)
    assert len(second.scored) <= 36 - already + 1
    ref = run_fake(inputs, tmp_path / "ref", shard_size=4, read=ReadOptions(batch_size=4))
    assert stats["counts"] == ref["counts"]
    kept, ref_kept = shard_rows(out, "kept"), shard_rows(tmp_path / "ref", "kept")
    assert kept == ref_kept
    ids = [r["id"] for r in kept + shard_rows(out, "dropped")]
    assert len(ids) == len(set(ids)) == 36
    a = pq.read_table(out / "scores.parquet").to_pylist()
    b = pq.read_table(tmp_path / "ref" / "scores.parquet").to_pylist()
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["decision"] for r in a] == [r["decision"] for r in b]

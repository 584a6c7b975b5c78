"""The local and Ray engines schedule the same steps: the same input gives byte-identical
stats.json and the same scores, decisions and shards; `--ray-address` joins a cluster started
with `ray start --head` on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import select_helpers
from select_helpers import FakeBackend, make_docs, shard_rows, write_jsonl

from router.select.options import ReadOptions

BAD = {2: b"{not json", 5: b'{"id": "nt", "body": "x"}', 40: b'{"id": "one", "text": "word"}'}
Run = Callable[..., dict[str, Any]]


def corpus(tmp_path: Path) -> list[Path]:
    docs = make_docs(300)
    docs[77]["id"] = docs[3]["id"]  # a duplicate id
    return [write_jsonl(tmp_path / "a.jsonl", docs[:200], BAD),
            write_jsonl(tmp_path / "b.jsonl.gz", docs[200:])]


def outputs(out: Path) -> dict[str, Any]:
    scores = pq.read_table(out / "scores.parquet")
    return {"stats": (out / "stats.json").read_bytes(),
            "scores": json.dumps(scores.to_pylist()),  # NaN -> "NaN", so NaN == NaN
            "rejected": (out / "rejected.jsonl").read_bytes(),
            "kept": shard_rows(out, "kept"), "dropped": shard_rows(out, "dropped"),
            "kept_names": sorted(p.name for p in (out / "kept").iterdir())}


@pytest.fixture
def ray_module() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(select_helpers)  # the fake backend goes to the actors
    yield ray
    cloudpickle.unregister_pickle_by_value(select_helpers)


def run_both(tmp_path: Path, run_fake: Run, ray: Any, **kw: Any) -> tuple[Path, Path]:
    inputs = corpus(tmp_path)
    common: dict[str, Any] = {"shard_size": 64, "read": ReadOptions(stratify="lang"), **kw}
    run_fake(inputs, tmp_path / "local", backends={"small": FakeBackend()}, **common)
    run_fake(inputs, tmp_path / "ray", backends={"small": FakeBackend()}, engine="ray",
             ray_num_cpus=2, **common)
    assert not ray.is_initialized()  # the engine stopped the Ray it started
    return tmp_path / "local", tmp_path / "ray"


@pytest.mark.slow
def test_ray_and_local_write_the_same_outputs(tmp_path: Path, run_fake: Run,
                                              ray_module: Any) -> None:
    local, remote = run_both(tmp_path, run_fake, ray_module)
    a, b = outputs(local), outputs(remote)
    sa, sb = json.loads(a["stats"]), json.loads(b["stats"])
    assert sorted(sa) == sorted(sb)
    for key in sa:  # field by field first, for a readable failure
        assert sa[key] == sb[key], key
    assert a["stats"] == b["stats"]  # then byte for byte
    assert sa["counts"]["input"] == 303 and sa["duplicate_ids"]["ids"] == 1
    for key in ("scores", "rejected", "kept", "dropped", "kept_names"):
        assert a[key] == b[key], key
    tl = json.loads((local / "timing.json").read_text())
    tr = json.loads((remote / "timing.json").read_text())
    assert (tl["engine"], tl["workers"]) == ("local", 1)
    assert (tr["engine"], tr["workers"]) == ("ray", 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ray_address_joins_an_existing_cluster(tmp_path: Path, run_fake: Run,
                                               ray_module: Any) -> None:
    port = _free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={tempfile.mkdtemp(prefix='ray', dir='/tmp')}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        inputs = corpus(tmp_path)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:  # the head is up once a driver can join it
            assert head.poll() is None, head.stderr.read() if head.stderr else b""
            probe = subprocess.run([str(ray_bin), "status", f"--address={address}"],
                                   capture_output=True, check=False)
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, probe.stderr.decode()[-2000:]
            time.sleep(1)
        stats = run_fake(inputs, tmp_path / "joined", backends={"small": FakeBackend()},
                         engine="ray", ray_address=address, shard_size=64)
        ref = run_fake(inputs, tmp_path / "local", shard_size=64)
        assert (tmp_path / "joined" / "stats.json").read_bytes() == (
            tmp_path / "local" / "stats.json").read_bytes()
        assert stats["counts"] == ref["counts"]
        timing = json.loads((tmp_path / "joined" / "timing.json").read_text())
        assert timing["engine"] == "ray" and timing["workers"] == 2
        assert not ray_module.is_initialized()  # disconnected; the cluster keeps running
        assert head.poll() is None
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        if head.stderr:
            head.stderr.close()

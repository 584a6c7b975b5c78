"""`router select --metrics-textfile`: documents by decision and tokens scored, in Prometheus'
text format (checked with promtool, installed from Debian's package when missing)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from select_helpers import make_docs, write_jsonl

from router import metrics
from tests.harness.prometheus import install_prometheus


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_textfile_counts_match_the_run(tmp_path: Path,
                                       run_fake: Callable[..., dict[str, Any]]) -> None:
    textfile = tmp_path / "metrics" / "router_select.prom"
    src = write_jsonl(tmp_path / "in.jsonl", make_docs(20), {3: b"{broken"})
    # the counters live in the process: earlier runs in this session count too
    before = _samples(generate_latest(metrics.SELECT_REGISTRY).decode())
    stats = run_fake([src], tmp_path / "out", metrics_textfile=textfile)
    text = textfile.read_text()
    got = _samples(text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return got.get(key, 0.0) - before.get(key, 0.0)

    counts = stats["counts"]
    for decision in ("kept", "dropped", "rejected"):
        assert delta("router_select_documents_total", decision=decision) == counts[decision]
    assert delta("router_select_records_processed_total") == counts["input"]
    assert delta("router_select_tokens_scored_total") == stats["tokens"] > 0
    assert got[("router_select_last_success_timestamp_seconds", ())] > 0
    assert "router_requests_total" not in text  # serving metrics stay out of the batch file

    promtool = install_prometheus().promtool
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), \
        proc.stdout + proc.stderr

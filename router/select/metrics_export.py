"""Progress metrics of a `router select` run, for Prometheus: a textfile or a push gateway.

A batch job is not scraped while it runs, so its metrics are written to a file that node
exporter's textfile collector reads (`--metrics-textfile`, rewritten atomically at most every
`every_s` seconds and at the end) and/or pushed to a Prometheus push gateway (`--pushgateway`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import push_to_gateway, write_to_textfile

from router import metrics

log = logging.getLogger("router.select")
JOB = "router_select"


class SelectMetrics:
    def __init__(self, *, textfile: Path | None, pushgateway: str | None,
                 every_s: float = 10.0) -> None:
        self.textfile = textfile
        self.pushgateway = pushgateway
        self.every_s = every_s
        self._last = 0.0

    @property
    def enabled(self) -> bool:
        return self.textfile is not None or self.pushgateway is not None

    def progress(self, docs: int, tokens: int) -> None:
        """Records just processed (scored or rejected) and tokens scored, in pass 1."""
        metrics.SELECT_RECORDS_PROCESSED.inc(docs)
        metrics.SELECT_TOKENS.inc(tokens)
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every_s:
            self._last = now
            self._export(final=False)

    def finish(self, counts: Mapping[str, int], seconds: float) -> None:
        for decision in ("kept", "dropped", "rejected"):
            metrics.SELECT_DOCUMENTS.labels(decision).inc(counts.get(decision, 0))
        metrics.SELECT_SECONDS.set(seconds)
        metrics.SELECT_LAST_SUCCESS.set(time.time())
        self._export(final=True)

    def _export(self, *, final: bool) -> None:
        if self.textfile is not None:
            self.textfile.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(self.textfile), metrics.SELECT_REGISTRY)  # tmp file + rename
        if self.pushgateway is not None:
            try:
                push_to_gateway(self.pushgateway, job=JOB, registry=metrics.SELECT_REGISTRY,
                                timeout=5.0)
            except OSError as exc:  # a monitoring hiccup never fails the data job
                if final:
                    log.warning("could not push metrics to %s: %s", self.pushgateway, exc)

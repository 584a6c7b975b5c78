"""A tiny progress display: a bar on a TTY (documents, tokens/s, ETA), log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _fmt_eta(seconds: float) -> str:
    """75.0 -> '1:15'; 3725 -> '1:02:05'."""
    s = int(max(seconds, 0))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, total: int | None, *, stream: TextIO | None = None, tty: bool | None = None,
                 every_s: float = 10.0, label: str = "scoring",
                 on_update: Callable[[int, int], None] | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self.label = label
        self.docs = 0
        self.tokens = 0
        self.t0 = time.monotonic()
        self._last = 0.0 if self.tty else self.t0
        self.on_update = on_update

    def update(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        if self.on_update is not None:
            self.on_update(docs, tokens)
        now = time.monotonic()
        if self.tty and now - self._last >= 0.1:
            self._last = now
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()
        elif not self.tty and now - self._last >= self.every_s:
            self._last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.t0, 1e-9)
        tps = self.tokens / elapsed
        dps = self.docs / elapsed
        if self.total:
            frac = min(self.docs / self.total, 1.0)
            width = 24
            bar = "#" * int(frac * width) + "." * (width - int(frac * width))
            eta = _fmt_eta((self.total - self.docs) / dps) if dps > 0 else "?"
            return (f"{self.label} [{bar}] {self.docs}/{self.total} docs {dps:.1f} docs/s "
                    f"{tps:.0f} tok/s ETA {eta}")
        return f"{self.label}: {self.docs} docs {dps:.1f} docs/s {tps:.0f} tok/s"

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
        self.stream.flush()

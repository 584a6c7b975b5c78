"""Stop sequences over streamed text: release only what cannot be the start of a stop string."""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Feed text pieces; get back the text that is safe to emit and whether a stop was hit.

    Example: stops ["\\nQ:"]; feed("Paris\\n") -> ("Paris", False) (the "\\n" is held back);
    feed("Q: next") -> ("", True); the stop string and all after it are dropped.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        text = self._pending + piece
        if not self._stops:
            self._pending = ""
            return text, False
        hits = [(i, s) for s in self._stops if (i := text.find(s)) >= 0]
        if hits:
            cut = min(i for i, _ in hits)
            self._pending = ""
            self.stopped = True
            return text[:cut], True
        hold = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """At the end of generation, what was held back is plain text."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

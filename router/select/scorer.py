"""The `Score` step: texts -> token logprobs (backend) -> signals (THE shared scorer).

Each record table is cut into consecutive slices of `batch_size` texts; a slice is one backend
call (its texts sorted by length: less padding for HTTP/vLLM backends) and comes out as one
scored table, so that the checkpoint after this step can save every few seconds. A text the
backend refuses (`InputError`: empty, a single token) becomes a rejected row; any other error
stops the run (saved chunks stay resumable).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router.backends.base import Backend
from router.errors import InputError
from router.scoring import (
    DEFAULT_SIGNALS,
    SCORER_VERSION,
    ScoreResult,
    SignalSpec,
    TokenLogprobs,
    score_sequences,
)
from router.select.readers import RAW_LIMIT
from router.select.steps import Step

INFO_COLUMNS = ("perplexity", "bits_per_byte")
REF_PREFIX = "ref_"


def signal_specs(extra: SignalSpec | None = None) -> tuple[SignalSpec, ...]:
    """Every default signal, plus `extra` when it has a parameter the defaults lack."""
    specs = DEFAULT_SIGNALS
    if extra is not None and extra.key not in {s.key for s in specs}:
        specs = (*specs, extra)
    return specs


def score_columns(specs: Sequence[SignalSpec]) -> list[str]:
    """Float columns the scorer adds, e.g. ['mean_logprob', ..., 'perplexity', 'bits_per_byte']."""
    return [s.key for s in specs] + list(INFO_COLUMNS)


class Score(Step):
    """Adds score columns to every record table (NaN on rejected rows)."""

    name = "score"

    def __init__(self, backend: Backend, *, specs: Sequence[SignalSpec] = DEFAULT_SIGNALS,
                 batch_size: int = 32, reference: Backend | None = None,
                 difference_of: SignalSpec | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.reference = reference
        self.specs = tuple(specs)
        self.batch_size = batch_size
        self.difference_of = difference_of
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- backend calls ---------------------------------------------------------------------------

    def _call(self, backend: Backend, texts: Sequence[str]) -> list[TokenLogprobs]:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        self.stat_update("backend_calls")
        return self._loop.run_until_complete(backend.score(list(texts)))

    def close(self) -> None:
        if self._loop is not None:
            for backend in (self.backend, self.reference):
                if backend is not None:
                    self._loop.run_until_complete(backend.aclose())
            self._loop.close()
            self._loop = None

    def _score_texts(self, backend: Backend, texts: list[str]
                     ) -> tuple[list[TokenLogprobs | None], list[str | None]]:
        """Scores of `texts` in length order; refused texts get None and a reason."""
        seqs: list[TokenLogprobs | None] = [None] * len(texts)
        reasons: list[str | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            self._score_group(backend, texts, order[start:start + self.batch_size], seqs,
                              reasons)
        return seqs, reasons

    def _score_group(self, backend: Backend, texts: list[str], idx: list[int],
                     seqs: list[TokenLogprobs | None], reasons: list[str | None]) -> None:
        """Score the texts `idx` in one call; a call refused for a text (InputError, raised
        before any work) is split in halves until the culprits stand alone, so the good texts
        stay packed: one bad text of 32 costs 11 calls, not 33."""
        try:
            got = self._call(backend, [texts[i] for i in idx])
        except InputError as exc:
            if len(idx) == 1:
                reasons[idx[0]] = f"cannot score ({backend.model_id}): {exc.message}"
                return
            half = len(idx) // 2
            self._score_group(backend, texts, idx[:half], seqs, reasons)
            self._score_group(backend, texts, idx[half:], seqs, reasons)
            return
        for i, seq in zip(idx, got, strict=True):
            seqs[i] = seq

    def _signals(self, backend: Backend, seqs: list[TokenLogprobs | None]) -> ScoreResult:
        ok = [s for s in seqs if s is not None]
        res = score_sequences(backend.model_id, ok, self.specs)
        n = len(seqs)
        pos = np.array([i for i, s in enumerate(seqs) if s is not None], dtype=np.int64)
        full: dict[str, Any] = {}
        for key, values in res.signals.items():
            col = np.full(n, np.nan)
            col[pos] = values
            full[key] = col
        return ScoreResult(model=res.model, signals=full, scorer_version=res.scorer_version)

    # -- the step ----------------------------------------------------------------------------------

    def score_table(self, table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        n = table.num_rows
        valid = np.asarray(pc.is_null(table.column("reject")).to_numpy(zero_copy_only=False))
        rows = np.flatnonzero(valid)
        rows_l: list[int] = rows.tolist()
        all_texts = table.column("text").to_pylist()
        texts = [str(all_texts[i]) for i in rows_l]  # valid rows have a text
        seqs, reasons = self._score_texts(self.backend, texts)
        ref_seqs: list[TokenLogprobs | None] = []
        if self.reference is not None:
            todo = [i for i, s in enumerate(seqs) if s is not None]
            got, ref_reasons = self._score_texts(self.reference, [texts[i] for i in todo])
            ref_seqs = [None] * len(texts)
            for j, i in enumerate(todo):
                ref_seqs[i] = got[j]
                if got[j] is None:
                    seqs[i] = None
                    reasons[i] = ref_reasons[j]
        main = self._signals(self.backend, seqs)
        reject = table.column("reject").to_pylist()
        for j, i in enumerate(rows_l):
            if reasons[j] is not None:
                reject[i] = reasons[j]
        out = table.set_column(table.schema.get_field_index("reject"), "reject",
                               pa.array(reject, pa.string()))
        raw: list[str | None] = out.column("raw").to_pylist()
        for j, i in enumerate(rows_l):
            if reasons[j] is not None:
                raw[i] = texts[j][:RAW_LIMIT]
        out = out.set_column(out.schema.get_field_index("raw"), "raw", pa.array(raw, pa.string()))

        def spread(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            col = np.full(n, np.nan)
            col[rows] = values
            return col

        for key in score_columns(self.specs):
            out = out.append_column(key, pa.array(spread(main.signals[key]), pa.float64()))
        tokens = spread(main.signals["n_tokens"])
        nbytes = spread(main.signals["n_bytes"])
        out = out.append_column("tokens", pa.array(np.nan_to_num(tokens).astype(np.int64)))
        out = out.append_column("bytes", pa.array(np.nan_to_num(nbytes).astype(np.int64)))
        out = out.append_column("model", pa.array([self.backend.model_id] * n, pa.string()))
        out = out.append_column("scorer_version", pa.array([SCORER_VERSION] * n, pa.string()))
        if self.reference is not None:
            ref = self._signals(self.reference, [s if s is not None and seqs[i] is not None
                                                 else None for i, s in enumerate(ref_seqs)])
            for key in score_columns(self.specs):
                out = out.append_column(REF_PREFIX + key,
                                        pa.array(spread(ref.signals[key]), pa.float64()))
            out = out.append_column("ref_model",
                                    pa.array([self.reference.model_id] * n, pa.string()))
            spec = self.difference_of or SignalSpec("logprob_per_byte")
            diff = spread(main.signals[spec.key] - ref.signals[spec.key])
            out = out.append_column("difference", pa.array(diff, pa.float64()))
        out = out.drop_columns(["text"])  # scores travel without text
        scored = int(np.isfinite(tokens).sum())
        self.stat_update("documents_scored", float(scored))
        self.stat_update("tokens_scored", float(np.nansum(tokens)))
        self.stat_update("rejected_by_scorer", float(sum(r is not None for r in reasons)))
        self.stat_update("scoring_seconds", time.perf_counter() - t0)
        return out

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        for table in tables:
            for piece in slices(table, self.batch_size):
                yield self.score_table(piece)


def slices(table: pa.Table, per: int) -> Iterator[pa.Table]:
    """Consecutive slices of `table` with at most `per` rows to score (rejected rows ride along
    with the slice before them). Example: valid rows [1, 1, 0, 1, 1], per 2 -> rows [0, 3), [3, 5).
    """
    valid = np.asarray(pc.is_null(table.column("reject")).to_numpy(zero_copy_only=False))
    starts = np.flatnonzero(valid)[::per]  # (pieces,) the first valid row of each piece
    cuts = [0, *starts[1:].tolist(), table.num_rows]
    for a, b in itertools.pairwise(cuts):
        if b > a:
            yield table.slice(a, b - a)

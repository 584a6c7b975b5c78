"""Pass 2's writer side: re-read an input once, in order, and route each record of a scored
part to its kept or dropped shard with the score columns added. Text is read here only to be
copied; decisions come from the scores."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson

from router.errors import InputError
from router.select.options import SelectOptions
from router.select.readers import RecordReader, Source
from router.select.steps import Batch
from router.select.writers import ShardWriter, shard_name


class Emitter:
    def __init__(self, source: Source, opts: SelectOptions, reader_args: dict[str, Any]) -> None:
        self.source = source
        self.opts = opts
        self.reader = RecordReader(**reader_args, keep_raw=True)
        self._rows: Iterator[tuple[int, str | None, str | None]] | None = None
        self._batches: Iterator[Batch] | None = None
        self._buf: Batch | None = None
        self._buf_start = 0

    def _records(self) -> Iterator[tuple[int, str | None, str | None]]:
        for table in self.reader.read(self.source):
            yield from zip(table.column("seq").to_pylist(), table.column("raw").to_pylist(),
                           table.column("text").to_pylist(), strict=True)

    def emit_part(self, part: int, scored: Batch, col: str, shard_size: int) -> tuple[int, int]:
        """Write part `part` (its decided score table) to kept/ and dropped/ shards."""
        name = shard_name(self.source, part)
        parquet = self.source.format == "parquet"
        comp = self.source.compression if self.source.format == "jsonl" else ""
        kept = ShardWriter(self.opts.out / "kept" / name, parquet=parquet, compression=comp,
                           order_by_score=self.opts.order_by_score)
        dropped = ShardWriter(self.opts.out / "dropped" / name, parquet=parquet,
                              compression=comp)
        try:
            if parquet:
                self._emit_parquet(scored, col, kept, dropped)
            else:
                self._emit_lines(scored, col, kept, dropped)
        except BaseException:
            kept.abort()
            dropped.abort()
            raise
        return kept.close(), dropped.close()

    def _score_cols(self, scored: Batch, col: str) -> dict[str, list[Any]]:
        return {"score": scored.column(col).to_pylist(),
                "bits_per_byte": scored.column("bits_per_byte").to_pylist(),
                "tokens": scored.column("tokens").to_pylist(),
                "priority": scored.column("priority").to_pylist(),
                "weight": scored.column("weight").to_pylist()}

    def _emit_lines(self, scored: Batch, col: str, kept: ShardWriter,
                    dropped: ShardWriter) -> None:
        if self._rows is None:
            self._rows = self._records()
        seqs = scored.column("seq").to_pylist()
        decisions = scored.column("decision").to_pylist()
        ids = scored.column("id").to_pylist()
        sc = self._score_cols(scored, col)
        for i, seq in enumerate(seqs):
            got = next(self._rows, None)
            if got is None or got[0] != seq:
                raise InputError(f"{self.source.path}: record {seq + 1} changed or vanished "
                                 "since it was scored")
            if decisions[i] == "rejected":
                continue
            _, raw, text = got
            if self.source.format == "jsonl":
                assert raw is not None
                obj = orjson.loads(raw)
            else:
                obj = {"id": ids[i], "text": text}
            obj["score"] = sc["score"][i]
            obj["bits_per_byte"] = sc["bits_per_byte"][i]
            obj["tokens"] = sc["tokens"][i]
            if decisions[i] == "kept":
                obj["priority"] = sc["priority"][i]
                obj["weight"] = sc["weight"][i]
                kept.write_json(obj, sc["score"][i])
            else:
                dropped.write_json(obj, sc["score"][i])

    def _slice(self, start: int, n: int) -> Batch:
        """Rows [start, start + n) of the Parquet input, all its columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._batches is None:
            pf = pq.ParquetFile(self.source.path)
            self._batches = (pa.Table.from_batches([b]) for b in pf.iter_batches(65536))
        pieces: list[Batch] = []
        need = n
        while need > 0:
            if self._buf is None or self._buf.num_rows == 0:
                nxt = next(self._batches, None)
                if nxt is None:
                    raise InputError(f"{self.source.path}: rows changed since scoring")
                self._buf = nxt
            take = self._buf.slice(0, need)
            pieces.append(take)
            self._buf = self._buf.slice(take.num_rows)
            need -= take.num_rows
        return pa.concat_tables(pieces) if pieces else pa.table({})

    def _emit_parquet(self, scored: Batch, col: str, kept: ShardWriter,
                      dropped: ShardWriter) -> None:
        import pyarrow as pa

        seqs = np.asarray(scored.column("seq").to_numpy())
        if len(seqs) == 0:
            return
        rows = self._slice(int(seqs[0]), len(seqs))
        dec = np.asarray(scored.column("decision").to_pylist(), dtype=object)
        extra = self._score_cols(scored, col)
        for name, values in extra.items():
            if name in rows.column_names:
                rows = rows.drop_columns([name])
            rows = rows.append_column(name, pa.array(values))
        kept.write_table(rows.filter(pa.array(dec == "kept")))
        d = rows.filter(pa.array(dec == "dropped")).drop_columns(["priority", "weight"])
        dropped.write_table(d)

    def close(self) -> None:
        self._rows = None
        self._batches = None

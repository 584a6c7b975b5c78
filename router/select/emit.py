"""The `WriteShards` step: kept/ and dropped/ shards, one pair per `shard_size` records of each
input. Each input is re-read once, in order, and each record is routed to its kept or dropped
shard with the score columns added. Text is read here only to be copied; decisions come from
the scores. At the end the records written must equal the records decided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from router.errors import InputError
from router.select.options import ReadOptions
from router.select.readers import Read
from router.select.sources import Source
from router.select.steps import Step
from router.select.writers import ShardWriter, shard_name

Log = Callable[[str], None]


class _Emitter:
    """Writes the records of one input, decided table after decided table, in input order."""

    def __init__(self, source: Source, read: ReadOptions, out: Path, *, column: str,
                 shard_size: int, order_by_score: bool) -> None:
        self.source = source
        self.out = out
        self.column = column
        self.shard_size = shard_size
        self.order_by_score = order_by_score
        self.reader = Read(read, keep_raw=True)
        self._rows: Iterator[tuple[int, str | None, str | None]] | None = None
        self._batches: Iterator[pa.Table] | None = None
        self._buf: pa.Table | None = None
        self._part = -1
        self._writers: tuple[ShardWriter, ShardWriter] | None = None
        self.written = {"kept": 0, "dropped": 0}

    def emit(self, scored: pa.Table) -> None:
        parts = np.asarray(scored.column("seq").to_numpy()) // self.shard_size
        for p in np.unique(parts).tolist():
            kept, dropped = self._shards(int(p))
            sub = scored.filter(pa.array(parts == p))
            try:
                if self.source.format == "parquet":
                    self._emit_parquet(sub, kept, dropped)
                else:
                    self._emit_lines(sub, kept, dropped)
            except BaseException:
                kept.abort()
                dropped.abort()
                self._writers = None
                raise

    def _shards(self, part: int) -> tuple[ShardWriter, ShardWriter]:
        if part != self._part or self._writers is None:
            self.close_shards()
            name = shard_name(self.source, part)
            parquet = self.source.format == "parquet"
            comp = self.source.compression if self.source.format == "jsonl" else ""
            self._writers = (
                ShardWriter(self.out / "kept" / name, parquet=parquet, compression=comp,
                            order_by_score=self.order_by_score),
                ShardWriter(self.out / "dropped" / name, parquet=parquet, compression=comp))
            self._part = part
        return self._writers

    def close_shards(self) -> None:
        if self._writers is not None:
            kept, dropped = self._writers
            self.written["kept"] += kept.close()
            self.written["dropped"] += dropped.close()
            self._writers = None

    def _score_cols(self, scored: pa.Table) -> dict[str, list[Any]]:
        return {"score": scored.column(self.column).to_pylist(),
                "bits_per_byte": scored.column("bits_per_byte").to_pylist(),
                "tokens": scored.column("tokens").to_pylist(),
                "priority": scored.column("priority").to_pylist(),
                "weight": scored.column("weight").to_pylist()}

    def _records(self) -> Iterator[tuple[int, str | None, str | None]]:
        for table in self.reader.read(self.source):
            yield from zip(table.column("seq").to_pylist(), table.column("raw").to_pylist(),
                           table.column("text").to_pylist(), strict=True)

    def _emit_lines(self, scored: pa.Table, kept: ShardWriter, dropped: ShardWriter) -> None:
        if self._rows is None:
            self._rows = self._records()
        decisions = scored.column("decision").to_pylist()
        ids = scored.column("id").to_pylist()
        sc = self._score_cols(scored)
        seqs = cast(list[int], scored.column("seq").to_pylist())
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
            obj.update(score=sc["score"][i], bits_per_byte=sc["bits_per_byte"][i],
                       tokens=sc["tokens"][i])
            if decisions[i] == "kept":
                obj.update(priority=sc["priority"][i], weight=sc["weight"][i])
                kept.write_json(obj, sc["score"][i])
            else:
                dropped.write_json(obj, sc["score"][i])

    def _slice(self, start: int, n: int) -> pa.Table:
        """Rows [start, start + n) of the Parquet input, all its columns (read in order)."""
        if self._batches is None:
            pf = pq.ParquetFile(self.source.path)
            self._batches = (pa.Table.from_batches([b]) for b in pf.iter_batches(65536))
        pieces: list[pa.Table] = []
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
        return pa.concat_tables(pieces)

    def _emit_parquet(self, scored: pa.Table, kept: ShardWriter, dropped: ShardWriter) -> None:
        seqs = np.asarray(scored.column("seq").to_numpy())
        if len(seqs) == 0:
            return
        rows = self._slice(int(seqs[0]), len(seqs))
        dec = np.asarray(scored.column("decision").to_pylist(), dtype=object)
        for name, values in self._score_cols(scored).items():
            if name in rows.column_names:
                rows = rows.drop_columns([name])
            rows = rows.append_column(name, pa.array(values))
        kept.write_table(rows.filter(pa.array(dec == "kept")))
        dropped.write_table(rows.filter(pa.array(dec == "dropped"))
                            .drop_columns(["priority", "weight"]))


class WriteShards(Step):
    """Decided tables -> OUT/kept/ and OUT/dropped/ shards; passes every table on."""

    name = "write_shards"

    def __init__(self, sources: Sequence[Source], read: ReadOptions, out: Path, *, column: str,
                 shard_size: int, order_by_score: bool, log: Log) -> None:
        super().__init__()
        self.emitters = {s.index: _Emitter(s, read, out, column=column, shard_size=shard_size,
                                           order_by_score=order_by_score)
                         for s in sources if Path(s.path).exists()}
        self.missing = [s.path for s in sources if s.index not in self.emitters]
        self.out = out
        self.log = log

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        for path in self.missing:
            self.log(f"warning: input {path} is gone: its kept/dropped shards are not written")
        decided = {"kept": 0, "dropped": 0}
        for t in tables:
            fi = int(t.column("file_index")[0].as_py()) if t.num_rows else -1
            if fi in self.emitters:
                self.emitters[fi].emit(t)
                dec = t.column("decision").to_pylist()
                decided["kept"] += dec.count("kept")
                decided["dropped"] += dec.count("dropped")
            yield t
        written = {"kept": 0, "dropped": 0}
        for em in self.emitters.values():
            em.close_shards()
            written = {k: written[k] + em.written[k] for k in written}
        (self.out / "kept").mkdir(exist_ok=True)
        (self.out / "dropped").mkdir(exist_ok=True)
        if written != decided:
            raise InputError(f"counts do not reconcile: decided {decided}, shards written "
                             f"{written} (did an input change since it was scored?)")
        self.stat_update("shard_records_kept", written["kept"])
        self.stat_update("shard_records_dropped", written["dropped"])

    def summary(self) -> dict[str, Any]:
        return {"missing_inputs": self.missing} if self.missing else {}

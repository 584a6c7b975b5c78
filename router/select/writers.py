"""The `WriteScores` step (scores.parquet, rejected.jsonl) and output shards, all written under
a temporary name and renamed when complete.

Output shards: written under a temporary name and renamed when complete, so a crash never
leaves a half-written shard under its final name. JSONL shards keep the input's compression;
Parquet shards keep its columns; plain-text inputs are written as JSONL (the score columns need
a place). With `order_by_score`, a shard's records are sorted by score, highest first.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from router.select.sources import Compression, Source
from router.select.steps import Step

TMP_SUFFIX = ".tmp"


def shard_name(source: Source, part: int) -> str:
    """'data/a.jsonl.gz', part 3 -> '00000-00003-a.jsonl.gz' (input index, part, stem)."""
    if source.format == "parquet":
        ext = ".parquet"
    else:
        ext = ".jsonl" + {"": "", "gz": ".gz", "zst": ".zst"}[source.compression]
    return f"{source.index:05d}-{part:05d}-{source.stem}{ext}"


def _open_out(path: Path, compression: Compression) -> IO[bytes]:
    if compression == "gz":
        return cast(IO[bytes], gzip.open(path, "wb", compresslevel=6))
    if compression == "zst":
        import zstandard

        raw = open(path, "wb")  # noqa: SIM115 - closed with the wrapper
        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)  # type: ignore[no-any-return]
    return open(path, "wb")


def replace_atomic(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


class ShardWriter:
    """One output shard. JSONL: `write_json(obj, score)`; Parquet: `write_table(table)`."""

    def __init__(self, path: Path, *, parquet: bool = False, compression: Compression = "",
                 order_by_score: bool = False, score_column: str = "score") -> None:
        self.path = path
        self.tmp = path.with_name(path.name + TMP_SUFFIX)
        self.parquet = parquet
        self.compression = compression
        self.order = order_by_score
        self.score_column = score_column
        self.count = 0
        self._fh: IO[bytes] | None = None
        self._pq: pq.ParquetWriter | None = None
        self._buffer: list[tuple[float, bytes]] = []
        self._tables: list[pa.Table] = []

    def write_json(self, obj: dict[str, Any], score: float) -> None:
        line = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        self.count += 1
        if self.order:
            self._buffer.append((score, line))
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = _open_out(self.tmp, self.compression)
        self._fh.write(line)

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.count += table.num_rows
        if self.order:
            self._tables.append(table)
            return
        if self._pq is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._pq = pq.ParquetWriter(self.tmp, table.schema)
        self._pq.write_table(table)

    def close(self) -> int:
        """Finish the shard (rename into place); an empty shard leaves no file."""
        if self.order and self._buffer:
            self._buffer.sort(key=lambda x: -x[0])  # stable: ties keep input order
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = _open_out(self.tmp, self.compression)
            for _, line in self._buffer:
                self._fh.write(line)
            self._buffer = []
        if self.order and self._tables:
            table = pa.concat_tables(self._tables)
            table = table.sort_by([(self.score_column, "descending")])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, self.tmp)
            self._tables = []
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._pq is not None:
            self._pq.close()
            self._pq = None
        if self.tmp.exists():
            replace_atomic(self.tmp, self.path)
        return self.count

    def abort(self) -> None:
        for closer in (self._fh, self._pq):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    pass
        self._fh = self._pq = None
        self.tmp.unlink(missing_ok=True)


class WriteScores(Step):
    """Writes every decided table to OUT/scores.parquet and its rejected rows to
    OUT/rejected.jsonl (file, line, reason, raw); passes every table on."""

    name = "write_scores"

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        scores_tmp = self.out / "scores.parquet.tmp"
        rejected_tmp = self.out / "rejected.jsonl.tmp"
        writer: pq.ParquetWriter | None = None
        schema: pa.Schema | None = None
        with open(rejected_tmp, "wb") as rej:
            for t in tables:
                bad = t.filter(pc.is_valid(t.column("reject")))
                for row in bad.select(["file", "line", "reject", "raw"]).to_pylist():
                    rej.write(json.dumps({"file": row["file"], "line": row["line"],
                                          "reason": row["reject"], "raw": row["raw"]},
                                         ensure_ascii=False).encode() + b"\n")
                if writer is None or schema is None:
                    schema = t.schema
                    writer = pq.ParquetWriter(scores_tmp, schema)
                writer.write_table(t.cast(schema))
                self.stat_update("rows_written", t.num_rows)
                yield t
        if writer is not None:
            writer.close()
            scores_tmp.replace(self.out / "scores.parquet")
        else:
            scores_tmp.unlink(missing_ok=True)
        rejected_tmp.replace(self.out / "rejected.jsonl")

"""The `Read` step: task tables (ranges of inputs) -> record tables. JSONL (plain, .gz, .zst),
Parquet, plain text (lines or whole files).

Reading streams: one table of `batch_size` records at a time, whatever the file's size. Bad
records are not errors: they come out as rows with a `reject` reason and their `raw` line, so
that every record is accounted for (input = kept + dropped + rejected). A damaged compressed
stream becomes one such row after the last record read before the damage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pyarrow as pa

from router.errors import InputError
from router.select.options import ReadOptions
from router.select.sources import (
    START,
    Mark,
    Source,
    damage_message,
    iter_lines,
    open_binary,
    stream_errors,
)
from router.select.steps import RECORD_SCHEMA, Step

RAW_LIMIT = 2000  # characters of a rejected line kept in rejected.jsonl


class _Rows:
    """Accumulates record rows column-wise and flushes them as Arrow tables."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.cols: dict[str, list[Any]] = {k: [] for k in RECORD_SCHEMA.names}

    def add(self, seq: int, line: int, rid: str | None, text: str | None,
            stratum: str | None = None, reject: str | None = None, raw: str | None = None) -> None:
        c = self.cols
        c["file"].append(self.source.path)
        c["file_index"].append(self.source.index)
        c["seq"].append(seq)
        c["line"].append(line)
        c["id"].append(rid if rid is not None else f"{self.source.path}:{line}")
        c["text"].append(text)
        c["stratum"].append(stratum)
        c["reject"].append(reject)
        c["raw"].append(raw[:RAW_LIMIT] if raw is not None and reject is not None else raw)

    def __len__(self) -> int:
        return len(self.cols["seq"])

    def flush(self) -> pa.Table:
        table = pa.Table.from_pydict(self.cols, schema=RECORD_SCHEMA)
        self.cols = {k: [] for k in self.cols}
        return table


def _field_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _stratum(value: Any) -> str:
    return "(missing)" if value is None else (_field_str(value) or "")


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 ({exc.reason} at byte {exc.start})"


class Read(Step):
    """Task tables -> record tables: every range of every task row, `batch_size` at a time."""

    name = "read"

    def __init__(self, opts: ReadOptions, *, keep_raw: bool = False) -> None:
        super().__init__()
        self.opts = opts
        self.keep_raw = keep_raw

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        for tasks in tables:
            for t in tasks.to_pylist():
                src = Source(path=t["path"], index=t["index"], format=t["format"],
                             compression=t["compression"])
                stop = None if t["stop"] < 0 else t["stop"]
                mark = Mark(t["offset_seq"], t["offset"], t["offset_line"])
                for table in self.read(src, start=t["start"], stop=stop, mark=mark):
                    self.stat_update("records_read", table.num_rows)
                    yield table

    def read(self, source: Source, *, start: int = 0, stop: int | None = None,
             mark: Mark = START) -> Iterator[pa.Table]:
        """Records seq in [start, stop) of `source`, as tables; reading begins at `mark`."""
        try:
            if source.format == "parquet":
                yield from self._parquet(source, start, stop)
            elif source.format == "text" and self.opts.text_format == "file":
                yield from self._whole_file(source, start, stop)
            else:
                yield from self._lines(source, start, stop, mark)
        except (OSError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{source.path}: cannot be read: {exc}") from None

    # -- formats -------------------------------------------------------------------------------

    def _lines(self, source: Source, start: int, stop: int | None,
               mark: Mark) -> Iterator[pa.Table]:
        parse = self._jsonl_record if source.format == "jsonl" else self._text_record
        rows = _Rows(source)
        seq = mark.seq - 1
        with open_binary(source.path, source.compression) as fh:
            if mark.offset:
                fh.seek(mark.offset)
            for line in iter_lines(fh, first_line=mark.line, offset=mark.offset):
                if line.error is None and not line.raw.strip():
                    continue  # a blank line is not a record
                seq += 1
                if seq < start:
                    continue
                if stop is not None and seq >= stop:
                    break
                if line.error is not None:
                    rows.add(seq, line.number, None, None, reject=line.error)
                else:
                    parse(rows, seq, line.number, line.raw)
                if len(rows) >= self.opts.batch_size:
                    yield rows.flush()
        if len(rows):
            yield rows.flush()

    def _jsonl_record(self, rows: _Rows, seq: int, lineno: int, raw: bytes) -> None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.add(seq, lineno, None, None, reject=_not_utf8(exc),
                     raw=raw.decode("utf-8", "backslashreplace").rstrip("\n"))
            return
        line = line.rstrip("\r\n")
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            rows.add(seq, lineno, None, None, reject=f"bad JSON: {exc}", raw=line)
            return
        if not isinstance(obj, dict):
            rows.add(seq, lineno, None, None, reject="not a JSON object", raw=line)
            return
        o = self.opts
        rid = _field_str(obj.get(o.id_field))
        stratum = _stratum(obj.get(o.stratify)) if o.stratify else None
        text = obj.get(o.text_field)
        reject = (f"missing field {o.text_field!r}" if o.text_field not in obj
                  else f"field {o.text_field!r} is not a string" if not isinstance(text, str)
                  else "empty text" if not text.strip() else None)
        if reject is not None:
            rows.add(seq, lineno, rid, None, stratum, reject=reject, raw=line)
        else:
            rows.add(seq, lineno, rid, text, stratum, raw=line if self.keep_raw else None)

    def _text_record(self, rows: _Rows, seq: int, lineno: int, raw: bytes,
                     whole: bool = False) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.add(seq, lineno, None, None, reject=_not_utf8(exc),
                     raw=raw.decode("utf-8", "backslashreplace"))
            return
        if not whole:
            text = text.rstrip("\r\n")
        if not text.strip():
            rows.add(seq, lineno, None, None, reject="empty text", raw=text)
        else:
            rows.add(seq, lineno, None, text)

    def _whole_file(self, source: Source, start: int, stop: int | None) -> Iterator[pa.Table]:
        if start > 0 or (stop is not None and stop <= 0):
            return
        rows = _Rows(source)
        with open_binary(source.path, source.compression) as fh:
            try:
                data = fh.read()
            except stream_errors() as exc:
                rows.add(0, 1, None, None, reject=damage_message(0, 0, exc))
            else:
                self._text_record(rows, 0, 1, data, whole=True)
        yield rows.flush()

    def _parquet(self, source: Source, start: int, stop: int | None) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        o = self.opts
        pf = pq.ParquetFile(source.path)
        names = pf.schema_arrow.names
        if o.text_field not in names:
            raise InputError(f"{source.path}: no column {o.text_field!r} "
                             f"(columns: {', '.join(names)})")
        cols = [c for c in dict.fromkeys((o.text_field, o.id_field, o.stratify))
                if c and c in names]
        rows = _Rows(source)
        seq = 0
        for batch in pf.iter_batches(batch_size=o.batch_size, columns=cols):
            n = batch.num_rows
            if seq + n <= start:
                seq += n
                continue
            data = batch.to_pydict()
            for i in range(n):
                if seq >= start and (stop is None or seq < stop):
                    self._parquet_record(rows, seq, {k: v[i] for k, v in data.items()})
                seq += 1
            if len(rows) >= o.batch_size:
                yield rows.flush()
            if stop is not None and seq >= stop:
                break
        if len(rows):
            yield rows.flush()

    def _parquet_record(self, rows: _Rows, seq: int, row: dict[str, Any]) -> None:
        o = self.opts
        text = row[o.text_field]
        rid = _field_str(row[o.id_field]) if o.id_field in row else None
        stratum = (_stratum(row.get(o.stratify)) if o.stratify else None)
        if isinstance(text, str) and text.strip():
            rows.add(seq, seq + 1, rid, text, stratum)
            return
        reason = ("missing text" if text is None else
                  "empty text" if isinstance(text, str) else "text is not a string")
        rows.add(seq, seq + 1, rid, None, stratum, reject=reason,
                 raw=orjson.dumps({k: _field_str(v) for k, v in row.items()}).decode())

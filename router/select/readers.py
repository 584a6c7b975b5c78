"""Inputs -> record batches: JSONL (plain, .gz, .zst), Parquet, plain text (lines or whole files).

Files, directories (recursed) and globs expand to a sorted list of sources. Reading streams:
one batch of `batch_size` records at a time, whatever the file's size. Bad records are not
errors: they come out as rows with a `reject` reason and their `raw` line, so that every
record is accounted for (input = kept + dropped + rejected).
"""

from __future__ import annotations

import glob
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, cast

import orjson

from router.errors import InputError
from router.select.steps import Batch, Stats, Step, record_schema

Format = Literal["jsonl", "parquet", "text"]
Compression = Literal["", "gz", "zst"]
_JSONL = (".jsonl", ".ndjson", ".json")
_TEXT = (".txt", ".text")
RAW_LIMIT = 2000  # characters of a rejected line kept in rejected.jsonl


@dataclass(frozen=True)
class Source:
    """One input file: its path, format and compression. Example: a.jsonl.zst -> jsonl, zst."""

    path: str
    index: int
    format: Format
    compression: Compression

    @property
    def stem(self) -> str:
        """File name without format suffixes, for output shard names: 'a.jsonl.gz' -> 'a'."""
        name = Path(self.path).name
        for suffix in (".gz", ".zst", *_JSONL, *_TEXT, ".parquet"):
            name = name.removesuffix(suffix)
        return name or "shard"


def detect(path: str) -> tuple[Format, Compression] | None:
    """'x.jsonl.gz' -> ('jsonl', 'gz'); 'x.parquet' -> ('parquet', ''); unknown -> None."""
    name = path.lower()
    comp: Compression = ""
    if name.endswith(".gz"):
        comp, name = "gz", name[:-3]
    elif name.endswith(".zst"):
        comp, name = "zst", name[:-4]
    if name.endswith(_JSONL):
        return "jsonl", comp
    if name.endswith(".parquet") and not comp:
        return "parquet", comp
    if name.endswith(_TEXT):
        return "text", comp
    return None


def expand_inputs(inputs: list[str] | tuple[str, ...]) -> list[Source]:
    """Files, directories and globs -> sources in a stable order (duplicates removed)."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and detect(str(f)))
            if not found:
                raise InputError(f"{item}: the directory holds no .jsonl/.parquet/.txt files")
            paths.extend(found)
        elif p.is_file():
            if detect(str(p)) is None:
                raise InputError(f"{item}: unknown input format (expected .jsonl, .jsonl.gz, "
                                 ".jsonl.zst, .parquet or .txt)")
            paths.append(str(p))
        elif glob.has_magic(item):
            found = sorted(f for f in glob.glob(str(p), recursive=True)
                           if Path(f).is_file() and detect(f))
            if not found:
                raise InputError(f"{item}: the pattern matches no input file")
            paths.extend(found)
        else:
            raise InputError(f"{item}: no such file or directory")
    seen: set[str] = set()
    out: list[Source] = []
    for path in paths:
        key = str(Path(path).resolve())
        if key in seen:
            continue
        seen.add(key)
        fmt = detect(path)
        assert fmt is not None
        out.append(Source(path=path, index=len(out), format=fmt[0], compression=fmt[1]))
    return out


def open_binary(path: str, compression: Compression) -> IO[bytes]:
    if compression == "gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if compression == "zst":
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 - closed with the wrapper
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader)
    return open(path, "rb")


class _Rows:
    """Accumulates record rows column-wise and flushes them as Arrow tables."""

    def __init__(self, source: Source, batch_size: int) -> None:
        self.source = source
        self.raw_limit: int | None = RAW_LIMIT
        self.batch_size = batch_size
        self.cols: dict[str, list[Any]] = {k: [] for k in record_schema().names}

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
        if raw is not None and reject is not None and self.raw_limit:
            raw = raw[:self.raw_limit]
        c["raw"].append(raw)

    def __len__(self) -> int:
        return len(self.cols["seq"])

    def flush(self) -> Batch:
        import pyarrow as pa

        table = pa.Table.from_pydict(self.cols, schema=record_schema())
        self.cols = {k: [] for k in self.cols}
        return table


def _field_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class RecordReader(Step):
    """Reads one source's records from record number `skip` on, `batch_size` at a time."""

    name = "reader"

    def __init__(self, *, text_field: str = "text", id_field: str = "id",
                 text_format: Literal["lines", "file"] = "lines",
                 stratify: str | None = None, batch_size: int = 256,
                 keep_raw: bool = False) -> None:
        super().__init__()
        self.keep_raw = keep_raw
        self.text_field = text_field
        self.id_field = id_field
        self.text_format = text_format
        self.stratify = stratify
        self.batch_size = batch_size

    def read(self, source: Source, skip: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Records seq in [skip, stop) of `source`, as batches."""
        try:
            if source.format == "jsonl":
                yield from self._jsonl(source, skip, stop)
            elif source.format == "parquet":
                yield from self._parquet(source, skip, stop)
            else:
                yield from self._text(source, skip, stop)
        except (OSError, EOFError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{source.path}: cannot be read: {exc}") from None

    def run(self, batches: Any) -> Iterator[Batch]:
        """`batches` is an iterable of sources (the reader starts the pipeline)."""
        for source in batches:
            yield from self.read(source)

    # -- formats -------------------------------------------------------------------------------

    def _jsonl(self, source: Source, skip: int, stop: int | None) -> Iterator[Batch]:
        rows = _Rows(source, self.batch_size)
        seq = -1
        with open_binary(source.path, source.compression) as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue  # a blank line is not a record
                seq += 1
                if seq < skip:
                    continue
                if stop is not None and seq >= stop:
                    break
                self._jsonl_record(rows, seq, lineno, raw)
                if len(rows) >= self.batch_size:
                    self.stat_update("records", len(rows))
                    yield rows.flush()
        if len(rows):
            self.stat_update("records", len(rows))
            yield rows.flush()

    def _jsonl_record(self, rows: _Rows, seq: int, lineno: int, raw: bytes) -> None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.add(seq, lineno, None, None, reject=f"not UTF-8 ({exc.reason} at byte "
                     f"{exc.start})", raw=raw.decode("utf-8", "backslashreplace").rstrip("\n"))
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
        rid = _field_str(obj.get(self.id_field))
        stratum = self._stratum(obj.get(self.stratify)) if self.stratify else None
        if self.text_field not in obj:
            rows.add(seq, lineno, rid, None, stratum,
                     reject=f"missing field {self.text_field!r}", raw=line)
            return
        text = obj[self.text_field]
        if not isinstance(text, str):
            rows.add(seq, lineno, rid, None, stratum,
                     reject=f"field {self.text_field!r} is not a string", raw=line)
            return
        if not text.strip():
            rows.add(seq, lineno, rid, None, stratum, reject="empty text", raw=line)
            return
        rows.add(seq, lineno, rid, text, stratum, raw=line if self.keep_raw else None)

    @staticmethod
    def _stratum(value: Any) -> str:
        return "(missing)" if value is None else (_field_str(value) or "")

    def _parquet(self, source: Source, skip: int, stop: int | None) -> Iterator[Batch]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(source.path)
        names = pf.schema_arrow.names
        if self.text_field not in names:
            raise InputError(f"{source.path}: no column {self.text_field!r} "
                             f"(columns: {', '.join(names)})")
        cols = [c for c in {self.text_field, self.id_field, self.stratify} if c and c in names]
        rows = _Rows(source, self.batch_size)
        seq = 0
        for batch in pf.iter_batches(batch_size=self.batch_size, columns=cols):
            data = batch.to_pydict()
            n = batch.num_rows
            if seq + n <= skip:
                seq += n
                continue
            for i in range(n):
                if seq < skip:
                    seq += 1
                    continue
                if stop is not None and seq >= stop:
                    break
                text = data[self.text_field][i]
                rid = _field_str(data[self.id_field][i]) if self.id_field in data else None
                stratum = (self._stratum(data[self.stratify][i])
                           if self.stratify and self.stratify in data
                           else ("(missing)" if self.stratify else None))
                if text is None or not isinstance(text, str) or not text.strip():
                    reason = "missing text" if text is None else (
                        "empty text" if isinstance(text, str) else "text is not a string")
                    rows.add(seq, seq + 1, rid, None, stratum, reject=reason,
                             raw=orjson.dumps({k: _field_str(v[i]) for k, v in data.items()})
                             .decode())
                else:
                    rows.add(seq, seq + 1, rid, text, stratum)
                seq += 1
            if len(rows) >= self.batch_size:
                self.stat_update("records", len(rows))
                yield rows.flush()
            if stop is not None and seq >= stop:
                break
        if len(rows):
            self.stat_update("records", len(rows))
            yield rows.flush()

    def _text(self, source: Source, skip: int, stop: int | None) -> Iterator[Batch]:
        rows = _Rows(source, self.batch_size)
        with open_binary(source.path, source.compression) as fh:
            if self.text_format == "file":
                if skip == 0 and (stop is None or stop > 0):
                    data = fh.read()
                    self._text_record(rows, 0, 1, data, whole=True)
            else:
                seq = -1
                for lineno, raw in enumerate(fh, start=1):
                    if not raw.strip():
                        continue
                    seq += 1
                    if seq < skip:
                        continue
                    if stop is not None and seq >= stop:
                        break
                    self._text_record(rows, seq, lineno, raw, whole=False)
                    if len(rows) >= self.batch_size:
                        self.stat_update("records", len(rows))
                        yield rows.flush()
        if len(rows):
            self.stat_update("records", len(rows))
            yield rows.flush()

    def _text_record(self, rows: _Rows, seq: int, lineno: int, raw: bytes, whole: bool) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.add(seq, lineno, None, None, reject=f"not UTF-8 ({exc.reason} at byte "
                     f"{exc.start})", raw=raw.decode("utf-8", "backslashreplace"))
            return
        if not whole:
            text = text.rstrip("\r\n")
        if not text.strip():
            rows.add(seq, lineno, None, None, reject="empty text", raw=text)
            return
        rows.add(seq, lineno, None, text)


def count_records(reader: RecordReader, source: Source) -> int:
    """How many records a source holds (a full read; used only for totals in progress)."""
    return sum(b.num_rows for b in reader.read(source))


def iter_sources(sources: list[Source]) -> Iterator[Source]:
    yield from sources


def stats_of(*steps: Step) -> Stats:
    return sum((s.stats for s in steps), start=Stats())


def record_count(source: Source, text_format: Literal["lines", "file"] = "lines") -> int:
    """Records in a source without parsing them: non-blank lines (JSONL, text lines), Parquet
    row count, or 1 (a whole text file)."""
    if source.format == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(source.path).metadata.num_rows)
    if source.format == "text" and text_format == "file":
        return 1
    with open_binary(source.path, source.compression) as fh:
        return sum(1 for line in fh if line.strip())

"""Input files: which ones (files, directories, globs), their format, how to open them, their
lines, and an index of record boundaries so that a range of records can be read on its own.

A damaged compressed stream (a truncated or corrupt `.gz`/`.zst`) is not an error here: the
line iterator stops at the damage and reports it as one `Line` with `error` set, so the records
before it are read and the damage becomes one rejected record naming the file, line and byte.
"""

from __future__ import annotations

import glob
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, NamedTuple, cast

from router.errors import InputError

Format = Literal["jsonl", "parquet", "text"]
Compression = Literal["", "gz", "zst"]
_JSONL = (".jsonl", ".ndjson", ".json")
_TEXT = (".txt", ".text")
MARK_EVERY = 64  # records between two indexed byte offsets (uncompressed line-based inputs)


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

    @property
    def line_based(self) -> bool:
        return self.format != "parquet"


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


def source_of(path: str, index: int) -> Source:
    fmt = detect(path)
    if fmt is None:
        raise InputError(f"{path}: unknown input format (expected .jsonl, .jsonl.gz, "
                         ".jsonl.zst, .parquet or .txt)")
    return Source(path=path, index=index, format=fmt[0], compression=fmt[1])


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
            source_of(item, 0)  # a clear error for an unknown format
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
        if key not in seen:
            seen.add(key)
            out.append(source_of(path, len(out)))
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


def stream_errors() -> tuple[type[BaseException], ...]:
    """What a damaged compressed stream raises while it is read."""
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error)
    try:
        import zstandard

        errors = (*errors, zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        pass
    return errors


class Line(NamedTuple):
    """One line of a line-based input: its 1-based number, byte offset and bytes; or, with
    `error` set, the place where the stream broke off (raw is then empty)."""

    number: int
    offset: int
    raw: bytes
    error: str | None = None


def damage_message(line: int, offset: int, exc: BaseException) -> str:
    """Example: (988, 49000, EOFError('...')) -> 'truncated or corrupt stream after line 988
    (byte 49000 of its decompressed data): EOFError: ...'."""
    return (f"truncated or corrupt stream after line {line} (byte {offset} of its decompressed "
            f"data): {type(exc).__name__}: {exc}")


def iter_lines(fh: IO[bytes], *, first_line: int = 1, offset: int = 0) -> Iterator[Line]:
    """The lines of an open binary stream; a damaged stream ends with one `Line` whose `error`
    says where and why. Example: b'a\\nb\\n' -> Line(1, 0, b'a\\n'), Line(2, 2, b'b\\n')."""
    number = first_line - 1
    it = iter(fh)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except stream_errors() as exc:
            yield Line(number + 1, offset, b"", damage_message(number, offset, exc))
            return
        number += 1
        yield Line(number, offset, raw)
        offset += len(raw)


class Mark(NamedTuple):
    """A record boundary: record `seq` starts at byte `offset`, on line `line`."""

    seq: int
    offset: int
    line: int


START = Mark(0, 0, 1)


@dataclass(frozen=True)
class SourceIndex:
    """How many records an input holds, and byte offsets of every MARK_EVERY-th record of an
    uncompressed line-based input (compressed streams cannot seek: only the start)."""

    count: int
    marks: tuple[Mark, ...] = (START,)

    def mark_before(self, seq: int) -> Mark:
        """The last indexed boundary at or before record `seq`."""
        best = START
        lo, hi = 0, len(self.marks) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.marks[mid].seq <= seq:
                best, lo = self.marks[mid], mid + 1
            else:
                hi = mid - 1
        return best


def index_source(source: Source, *, whole_file: bool = False) -> SourceIndex:
    """Count the records of an input as the reader will see them (blank lines are not records;
    a damaged stream's break counts as one rejected record).

    Example: b'{"text": "a b"}\\n\\n{"text": "c d"}\\n' -> SourceIndex(count=2, ...).
    """
    if source.format == "parquet":
        import pyarrow.parquet as pq

        return SourceIndex(int(pq.ParquetFile(source.path).metadata.num_rows))
    if whole_file:
        return SourceIndex(1)
    seekable = source.compression == ""
    marks = [START]
    seq = 0
    with open_binary(source.path, source.compression) as fh:
        for line in iter_lines(fh):
            if line.error is None and not line.raw.strip():
                continue
            if seekable and seq and seq % MARK_EVERY == 0:
                marks.append(Mark(seq, line.offset, line.number))
            seq += 1
    return SourceIndex(seq, tuple(marks))

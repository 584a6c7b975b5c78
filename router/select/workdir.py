"""The resumable state of a run, under DIR/_work, and the two steps that write and read it:

    run.json                         what was scored (inputs, model, signals): --resume checks it
    scores/FFFFF-SSSSSSSSSSSS.parquet  scores of records [S, stop) of input FFFFF (rejected too)
    done/FFFFF-SSSSSSSSSSSS.json       completion marker of that chunk: its range and counts

`Checkpoint` (the last step of pass 1) saves a chunk every `every_records` scored records or
`every_seconds`, whichever comes first, so a kill loses at most that much work. A chunk is
written under a temporary name and renamed, then marked: after a kill -9 it either has its
marker or is redone. `LoadScores` (the first step of pass 2) reads the marked chunks in input
order.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from router.errors import InputError
from router.select.steps import Stats, Step

WORK = "_work"
Range = tuple[int, int]  # records [start, stop) of one input


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def chunk_counts(table: pa.Table) -> Stats:
    """What a scored chunk holds: records, scored documents, tokens, rejected records."""
    rejected = table.num_rows - table.column("reject").null_count
    return Stats(records=table.num_rows, documents_scored=table.num_rows - rejected,
                 tokens_scored=int(pc.sum(table.column("tokens")).as_py() or 0),
                 rejected=rejected)


def _stem(file_index: int, start: int) -> str:
    return f"{file_index:05d}-{start:012d}"


class WorkDir:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.root = out.resolve() / WORK
        self.scores = self.root / "scores"
        self.done = self.root / "done"

    def start(self, fingerprint: dict[str, Any], *, resume: bool) -> None:
        """Create the work dir, or check that a resumed run scores the same thing."""
        run = self.root / "run.json"
        fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from run.json
        if run.exists():
            if not resume:
                raise InputError(f"{self.out} holds an unfinished run; pass --resume to continue "
                                 "it, or choose another --out")
            old = json.loads(run.read_text(encoding="utf-8"))
            for key, value in fingerprint.items():
                # a key that an older version did not record is not checked (`scoring`)
                if key in old and old[key] != value:
                    raise InputError(f"{self.out}: cannot resume: {key} changed "
                                     f"({old.get(key)!r} -> {value!r})")
        elif (self.out / "stats.json").exists() and not resume:
            raise InputError(f"{self.out} already holds the results of a run; choose another "
                             "--out (or --resume to redo its decisions)")
        self.scores.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(parents=True, exist_ok=True)
        for path in self.scores.iterdir():  # half-written or unmarked chunks are redone
            if path.suffix == ".tmp" or not (self.done / f"{path.stem}.json").exists():
                path.unlink()
        if not run.exists():
            write_json_atomic(run, fingerprint)

    def write_chunk(self, table: pa.Table, seconds: float = 0.0) -> None:
        """Save a scored chunk (consecutive records of one input), then its marker."""
        seqs = table.column("seq")
        fi = int(table.column("file_index")[0].as_py())
        start, stop = int(seqs[0].as_py()), int(seqs[-1].as_py()) + 1
        path = self.scores / f"{_stem(fi, start)}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        info = {"start": start, "stop": stop, "seconds": round(seconds, 3),
                **chunk_counts(table)}
        write_json_atomic(self.done / f"{_stem(fi, start)}.json", info)

    def _markers(self) -> Iterator[tuple[int, dict[str, Any], Path]]:
        for marker in sorted(self.done.glob("*.json")):
            path = self.scores / f"{marker.stem}.parquet"
            if path.exists():
                fi = int(marker.stem.split("-")[0])
                yield fi, json.loads(marker.read_text(encoding="utf-8")), path

    def done_ranges(self) -> dict[int, list[Range]]:
        """The scored ranges of every input, in order."""
        out: dict[int, list[Range]] = {}
        for fi, info, _ in self._markers():
            out.setdefault(fi, []).append((int(info["start"]), int(info["stop"])))
        return {fi: sorted(r) for fi, r in out.items()}

    def totals(self) -> Stats:
        """Pass 1's counts over every saved chunk (the same whatever the engine or kills)."""
        total = Stats()
        for _, info, _ in self._markers():
            total = total + {k: float(info[k]) for k in
                             ("records", "documents_scored", "tokens_scored", "rejected")}
        return total

    def chunks_table(self) -> pa.Table:
        """One row per saved chunk, in input order: file_index, start, stop, path."""
        rows = sorted((fi, int(info["start"]), int(info["stop"]), str(path))
                      for fi, info, path in self._markers())
        return pa.table({"file_index": pa.array([r[0] for r in rows], pa.int32()),
                         "start": pa.array([r[1] for r in rows], pa.int64()),
                         "stop": pa.array([r[2] for r in rows], pa.int64()),
                         "path": pa.array([r[3] for r in rows], pa.string())})

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass(eq=False)
class Checkpoint(Step):
    """Saves scored tables as chunks every `every_records` records or `every_seconds` seconds,
    whichever comes first (and at the end of its input); passes every table on."""

    name = "checkpoint"
    work: WorkDir
    every_records: int
    every_seconds: float

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        pending: list[pa.Table] = []
        rows = 0
        since = time.monotonic()

        def save() -> None:
            nonlocal pending, rows, since
            if pending:
                self.work.write_chunk(pa.concat_tables(pending), time.monotonic() - since)
                self.stat_update("chunks_saved")
            pending, rows, since = [], 0, time.monotonic()

        for table in tables:
            if pending and not _follows(pending[-1], table):
                save()
            pending.append(table)
            rows += table.num_rows
            if rows >= self.every_records or time.monotonic() - since >= self.every_seconds:
                save()
            yield table
        save()


def _follows(before: pa.Table, after: pa.Table) -> bool:
    """Does `after` continue `before` (same input, the next record)?"""
    if before.num_rows == 0 or after.num_rows == 0:
        return True
    same = before.column("file_index")[0].as_py() == after.column("file_index")[0].as_py()
    return bool(same and before.column("seq")[-1].as_py() + 1 == after.column("seq")[0].as_py())


class LoadScores(Step):
    """Chunk tables (`WorkDir.chunks_table`) -> the scored record tables they name."""

    name = "load_scores"

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        for chunks in tables:
            for path in chunks.column("path").to_pylist():
                table = pq.read_table(str(path))
                self.stat_update("records_loaded", table.num_rows)
                yield table

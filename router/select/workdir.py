"""The resumable state of a run, under DIR/_work:

    run.json                    what was scored (inputs, model, signals): --resume checks it
    scores/FFFFF-PPPPP.parquet  scores of part PPPPP of input FFFFF (every record, rejected too)
    done/FFFFF-PPPPP.json       completion marker of that part (written after the part)
    done/FFFFF.complete         every part of input FFFFF is scored

A part is `shard_size` consecutive records of one input. Parts are written under a temporary
name and renamed, then marked: after a kill -9 a part either has its marker or is redone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from router.errors import InputError
from router.select.steps import Batch

WORK = "_work"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


class WorkDir:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.root = out / WORK
        self.scores = self.root / "scores"
        self.done = self.root / "done"

    def exists(self) -> bool:
        return (self.root / "run.json").exists()

    def start(self, fingerprint: dict[str, Any], *, resume: bool) -> None:
        """Create the work dir, or check that a resumed run scores the same thing."""
        run = self.root / "run.json"
        if run.exists():
            if not resume:
                raise InputError(f"{self.out} holds an unfinished run; pass --resume to continue "
                                 "it, or choose another --out")
            old = json.loads(run.read_text(encoding="utf-8"))
            for key, value in fingerprint.items():
                if old.get(key) != value:
                    raise InputError(f"{self.out}: cannot resume: {key} changed "
                                     f"({old.get(key)!r} -> {value!r})")
        elif (self.out / "stats.json").exists() and not resume:
            raise InputError(f"{self.out} already holds the results of a run; choose another "
                             "--out (or --resume to redo its decisions)")
        self.scores.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(parents=True, exist_ok=True)
        for stale in self.scores.glob("*.tmp"):
            stale.unlink()
        if not run.exists():
            _write_json_atomic(run, fingerprint)

    def part_path(self, file_index: int, part: int) -> Path:
        return self.scores / f"{file_index:05d}-{part:05d}.parquet"

    def write_part(self, file_index: int, part: int, table: Batch, info: dict[str, Any]) -> None:
        import pyarrow.parquet as pq

        path = self.part_path(file_index, part)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        _write_json_atomic(self.done / f"{file_index:05d}-{part:05d}.json", info)

    def finished_parts(self, file_index: int) -> int:
        """How many leading parts of an input are scored (parts finish in order)."""
        n = 0
        while (self.done / f"{file_index:05d}-{n:05d}.json").exists():
            n += 1
        return n

    def mark_complete(self, file_index: int, parts: int) -> None:
        _write_json_atomic(self.done / f"{file_index:05d}.complete", {"parts": parts})

    def is_complete(self, file_index: int) -> bool:
        return (self.done / f"{file_index:05d}.complete").exists()

    def markers(self) -> list[str]:
        return sorted(p.name for p in self.done.glob("*.json"))

    def iter_parts(self) -> Iterator[tuple[int, int, Path]]:
        for path in sorted(self.scores.glob("*.parquet")):
            fi, part = path.stem.split("-")
            if (self.done / f"{path.stem}.json").exists():
                yield int(fi), int(part), path

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

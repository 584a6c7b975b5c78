"""The UTF-8 bytes of every token of a GGUF model, cached on disk beside the other model files.

Building the table asks llama.cpp for each of the vocabulary's pieces (49k ctypes calls for
SmolLM2, 0.14-0.3 s here), at every start of `router select` or `serve`; read back from the
cache it takes a few milliseconds. An entry is keyed by the model file's resolved path, size
and modification time, so a changed file is read again; a missing, unreadable or inconsistent
entry is rebuilt, and a cache that cannot be written costs only the time it would have saved.

    load(path, n_vocab) -> list[bytes] | None
    save(path, pieces)
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from router.models import cache_dir

VERSION = 1


def entry(model: Path) -> Path:
    """The cache file of `model`'s vocabulary (the key changes when the file does)."""
    st = model.stat()
    key = f"{VERSION}:{model.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return cache_dir() / "vocab" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"


def pack(pieces: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, blob): piece i is blob[offsets[i]:offsets[i + 1]].
    Example: [b"a", b"", b"bc"] -> ([0, 1, 1, 3], b"abc")"""
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(pieces), dtype=np.uint8)


def unpack(offsets: np.ndarray, blob: np.ndarray) -> list[bytes]:
    data = blob.tobytes()
    bounds = offsets.tolist()
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def load(model: Path, n_vocab: int) -> list[bytes] | None:
    """The cached pieces of `model`, or None (no entry, or one that does not fit)."""
    try:
        with np.load(entry(model)) as z:
            offsets, blob = z["offsets"], z["blob"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if (offsets.ndim != 1 or len(offsets) != n_vocab + 1 or offsets[0] != 0
            or offsets[-1] != len(blob) or bool(np.any(np.diff(offsets) < 0))):
        return None
    return unpack(offsets, blob)


def save(model: Path, pieces: list[bytes]) -> None:
    """Write the entry atomically (a temporary file renamed); any OSError is ignored."""
    try:
        path = entry(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets, blob = pack(pieces)
        buf = io.BytesIO()
        np.savez(buf, offsets=offsets, blob=blob)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return

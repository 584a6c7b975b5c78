"""Run the vllm_engine backend inside the vLLM venv and print its scores as JSON.

usage: python engine_check.py MODEL_DIR TEXT...   (PYTHONPATH must hold the repo root)
"""

from __future__ import annotations

import asyncio
import json
import sys

from router.backends.base import GenerationRequest
from router.backends.vllm_engine import VllmEngineBackend

SPLIT_PROMPT = "日本語のテキストです。日本語のテキストです。日本語の"


async def main() -> None:
    model_dir, texts = sys.argv[1], sys.argv[2:]
    backend = VllmEngineBackend(
        "smollm2-135m-instruct",
        model_dir,
        engine_args={"dtype": "float32", "max_model_len": 1024, "enforce_eager": True},
    )
    seqs = await backend.score(texts, top_k=2)
    gen = await backend.generate(
        GenerationRequest(prompt="The capital of France is", max_tokens=4, temperature=0.0)
    )
    split = await backend.generate(  # Japanese that SmolLM2 writes in byte-level pieces
        GenerationRequest(prompt=SPLIT_PROMPT, max_tokens=12, temperature=0.0)
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "scores": [
                    {
                        "tokens": list(s.tokens or ()),
                        "logprobs": s.logprobs.tolist(),
                        "top": None if s.top_logprobs is None else s.top_logprobs.tolist(),
                    }
                    for s in seqs
                ],
                "generation": {
                    "text": gen.text,
                    "logprobs": gen.logprobs.logprobs.tolist(),
                    "completion_tokens": gen.usage.completion_tokens,
                },
                "split_generation": {
                    "text": split.text,
                    "token_bytes": split.logprobs.token_bytes.tolist(),
                    "finish_reason": split.finish_reason,
                },
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())

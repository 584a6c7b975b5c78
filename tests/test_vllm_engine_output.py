"""vllm_engine's boundary: vLLM output objects (shaped like vllm's RequestOutput, built here
from SimpleNamespace) -> our values, and an output of another shape is an UpstreamError."""

from __future__ import annotations

from types import SimpleNamespace as NS
from typing import Any

import pytest

from router.backends.vllm_engine import generation_from_output, prompt_logprobs_from_output
from router.errors import UpstreamError


class Tok:
    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


def lp(value: float, rank: int) -> NS:
    return NS(logprob=value, rank=rank)


def output(token_ids: list[int], logprobs: Any, text: Any = "<1><2>") -> NS:
    comp = NS(token_ids=token_ids, logprobs=logprobs, text=text, finish_reason="length")
    return NS(outputs=[comp], prompt_token_ids=[9, 9, 9])


GOOD = [{1: lp(-0.5, 1), 5: lp(-1.5, 2)}, {2: lp(-2.0, 2), 6: lp(-0.1, 1)}]


def test_a_generation() -> None:
    gen = generation_from_output("m", output([1, 2], GOOD), Tok(), 2)
    assert gen.text == "<1><2>" and gen.finish_reason == "length"
    assert gen.logprobs.logprobs.tolist() == [-0.5, -2.0]
    assert gen.logprobs.top_logprobs is not None
    assert gen.logprobs.top_logprobs.tolist() == [[-0.5, -1.5], [-0.1, -2.0]]
    assert gen.alternatives is not None and gen.alternatives.tokens == (("<1>", "<5>"),
                                                                        ("<6>", "<2>"))
    assert (gen.usage.prompt_tokens, gen.usage.completion_tokens) == (3, 2)


@pytest.mark.parametrize("out", [
    output([1, 2], None),  # no logprobs at all
    output([1, 2], GOOD[:1]),  # one entry short
    output([1, 3], GOOD),  # the chosen token missing from its entry
    output([1, 2], [{1: "x"}, {2: lp(-1.0, 1)}]),
    output([1, 2], GOOD, text=5),
    NS(outputs=[]),
])
def test_an_output_of_another_shape_is_an_upstream_error(out: Any) -> None:
    with pytest.raises(UpstreamError, match="unexpected shape"):
        generation_from_output("m", out, Tok(), 2)


def test_prompt_logprobs() -> None:
    out = NS(prompt_logprobs=[None, *GOOD])
    seq = prompt_logprobs_from_output("m", [7, 1, 2], out, Tok(), 1)
    assert seq.logprobs.tolist() == [-0.5, -2.0] and seq.token_bytes.tolist() == [3, 3]
    assert seq.top_logprobs is not None and seq.top_logprobs.tolist() == [[-0.5], [-0.1]]
    with pytest.raises(UpstreamError):
        prompt_logprobs_from_output("m", [7, 1, 2, 3], out, Tok(), 0)  # one entry short

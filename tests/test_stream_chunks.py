"""`parse_chunk`: a streamed chunk -> its deltas, finish reason and usage.

A chunk of one token without alternatives (most of a stream under a policy that reads none)
takes a shortcut; every other chunk, and anything malformed, the general path. Both must give
the same deltas, and a malformed chunk must be refused whichever path sees it first.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from router.backends import openai_parse
from router.backends.openai_parse import MalformedAnswer, parse_chunk


def chunk(**choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": " hi"}, "logprobs": {"content": [
                {"token": " hi", "logprob": -0.25, "bytes": [32, 104, 105],
                 "top_logprobs": []}]}, "finish_reason": None, **choice}]}


def general(c: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setattr(openai_parse, "_one_token_chunk", lambda _: None)
        return parse_chunk(c, True)


def same(a: Any, b: Any) -> bool:
    (da, fa, ua), (db, fb, ub) = a, b
    if (fa, ua, len(da)) != (fb, ub, len(db)):
        return False
    for x, y in zip(da, db, strict=True):
        if (x.text, x.finish_reason, x.usage) != (y.text, y.finish_reason, y.usage):
            return False
        if (x.alternatives is None) != (y.alternatives is None):
            return False
        lx, ly = x.logprobs, y.logprobs
        if not (np.array_equal(lx.logprobs, ly.logprobs)
                and np.array_equal(lx.token_bytes, ly.token_bytes) and lx.tokens == ly.tokens
                and (lx.top_logprobs is None) == (ly.top_logprobs is None)):
            return False
    return True


CHUNKS = {
    "one token": chunk(),
    "one token, bytes null": chunk(logprobs={"content": [
        {"token": "é", "logprob": -1.5, "bytes": None, "top_logprobs": []}]}),
    "with alternatives": chunk(logprobs={"content": [
        {"token": " hi", "logprob": -0.25, "bytes": [32, 104, 105],
         "top_logprobs": [{"token": " hi", "logprob": -0.25}, {"token": "x", "logprob": -2.0}]}]}),
    "finish": chunk(finish_reason="length"),
    "no logprobs": chunk(logprobs=None),
    "two tokens": chunk(logprobs={"content": [
        {"token": " h", "logprob": -0.5, "bytes": [32, 104], "top_logprobs": []},
        {"token": "i", "logprob": -0.75, "bytes": [105], "top_logprobs": []}]}),
    "usage": {**chunk(), "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    "a piece of a character": chunk(delta={"content": ""}, logprobs={"content": [
        {"token": "\ufffd", "logprob": -0.5, "bytes": [239, 191, 189], "top_logprobs": []}]}),
    "the piece that ends it": chunk(delta={"content": "é"}, logprobs={"content": [
        {"token": "\ufffd", "logprob": -0.5, "bytes": [239, 191, 189], "top_logprobs": []}]}),
    "role": chunk(delta={"role": "assistant", "content": ""}, logprobs=None),
}


@pytest.mark.parametrize("name", CHUNKS)
def test_the_shortcut_gives_what_the_general_path_gives(name: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    c = CHUNKS[name]
    assert same(parse_chunk(copy.deepcopy(c), True), general(copy.deepcopy(c), monkeypatch))


def test_a_one_token_chunk() -> None:
    deltas, finish, usage = parse_chunk(chunk(), True)
    assert finish is None and usage is None and len(deltas) == 1
    d = deltas[0]
    assert d.text == " hi" and d.alternatives is None and d.logprobs.top_logprobs is None
    assert d.logprobs.logprobs.tolist() == [-0.25] and d.logprobs.token_bytes.tolist() == [3]
    assert d.logprobs.tokens == (" hi",)


@pytest.mark.parametrize("bad", [
    chunk(delta={"content": 5}),
    chunk(delta="text"),
    chunk(logprobs={"content": [{"token": " hi", "logprob": "-0.25", "top_logprobs": []}]}),
    chunk(logprobs={"content": [{"token": 7, "logprob": -0.25, "top_logprobs": []}]}),
    chunk(logprobs={"content": [{"token": " hi", "logprob": -0.25, "bytes": 3}]}),
    chunk(finish_reason=3),
    {"choices": "none"},
    [chunk()],
])
def test_malformed_chunks_are_refused(bad: Any) -> None:
    with pytest.raises(MalformedAnswer):
        parse_chunk(bad, True)

"""Generations -> OpenAI response bodies and SSE chunks (chat and completions).

Logprobs are always requested from the tiers; they appear in a reply only when the client asked
(chat: `logprobs: true` + `top_logprobs`; completions: `logprobs: k`), in OpenAI's shapes.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import orjson

from router.backends.base import TopAlternatives, Usage
from router.scoring import TokenLogprobs


def new_id(prefix: str) -> str:
    """`prefix-` and 32 random hex digits (as uuid4().hex, at a fifth of its cost)."""
    return f"{prefix}-{os.urandom(16).hex()}"


def _lp(x: float) -> float:
    return float(x) if math.isfinite(x) else -9999.0


def chat_logprobs(lp: TokenLogprobs, alts: TopAlternatives | None, k: int) -> dict[str, Any]:
    """{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}"""
    tokens = lp.tokens or tuple("" for _ in range(len(lp)))
    content = []
    for i, tok in enumerate(tokens):
        top: list[dict[str, Any]] = []
        if k > 0 and alts is not None and lp.top_logprobs is not None and i < len(alts.tokens):
            for t, v in zip(alts.tokens[i][:k], lp.top_logprobs[i][:k], strict=False):
                top.append({"token": t, "logprob": _lp(v), "bytes": list(t.encode())})
        content.append({"token": tok, "logprob": _lp(lp.logprobs[i]),
                        "bytes": list(tok.encode()), "top_logprobs": top})
    return {"content": content}


def completion_logprobs(lp: TokenLogprobs, alts: TopAlternatives | None, k: int,
                        offset: int = 0) -> dict[str, Any]:
    """{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}"""
    tokens = list(lp.tokens or tuple("" for _ in range(len(lp))))
    offsets = []
    pos = offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    top: list[dict[str, float]] | None = None
    if k > 0 and alts is not None and lp.top_logprobs is not None:
        top = [{t: _lp(v) for t, v in zip(alts.tokens[i][:k], lp.top_logprobs[i][:k],
                                          strict=False)}
               for i in range(min(len(tokens), len(alts.tokens)))]
    return {"tokens": tokens, "token_logprobs": [_lp(x) for x in lp.logprobs],
            "top_logprobs": top, "text_offset": offsets}


def usage_dict(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def chat_response(*, rid: str, model: str, text: str, finish: str, usage: Usage,
                  logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": logprobs, "finish_reason": finish}],
        "usage": usage_dict(usage),
    }


def completion_response(*, rid: str, model: str, text: str, finish: str, usage: Usage,
                        logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        "usage": usage_dict(usage),
    }


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    """Builds the SSE chunks of one streamed reply (chat or completions)."""

    def __init__(self, *, chat: bool, rid: str, model: str) -> None:
        self.chat = chat
        self.rid = rid
        self.model = model
        self.created = int(time.time())
        self.offset = 0

    def _chunk(self, choice: dict[str, Any], usage: Usage | None = None,
               empty: bool = False) -> bytes:
        obj: dict[str, Any] = {
            "id": self.rid, "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created, "model": self.model,
            "choices": [] if empty else [choice],
        }
        if usage is not None:
            obj["usage"] = usage_dict(usage)
        return sse(obj)

    def role(self) -> bytes:
        return self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None})

    def delta(self, text: str, logprobs: dict[str, Any] | None,
              finish: str | None = None) -> bytes:
        if self.chat:
            delta = {"content": text} if text or finish is None else {}
            return self._chunk({"index": 0, "delta": delta, "logprobs": logprobs,
                                "finish_reason": finish})
        self.offset += len(text)
        return self._chunk({"index": 0, "text": text, "logprobs": logprobs,
                            "finish_reason": finish})

    def usage(self, usage: Usage) -> bytes:
        return self._chunk({}, usage=usage, empty=True)

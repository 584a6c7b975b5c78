"""A fake vLLM OpenAI server (a real Starlette app on loopback) returning vLLM's exact shapes.

Behaviour is picked by the requested model name:
    ok / ok-low    a normal answer (token logprob -0.05 / -4.0)
    error500       500 with vLLM's error body
    slow           sleeps 5 s before answering (for timeouts); stops, and appends to ABANDONED,
                   when its client leaves first
    badjson        200 with a body that is not JSON
    cutstream      streams two chunks, then drops the connection without [DONE]
    flaky          503 on every other call (retries)
    huge           an answer of HUGE_BYTES bytes of text, no logprobs (body or stream)
    bad-<case>     a 200 answer broken as MALFORMED[case] says (body and every stream chunk)
    varied         a normal answer whose token logprob is read from the prompt: the number
                   after `logprob=` in it (-0.05 when there is none)
    trickle        a confident answer of TRICKLE_TOKENS tokens, one every `delay=` seconds (the
                   number after `delay=` in the prompt; 0.05 when there is none)

Every request body is appended to RECEIVED (the tests read what reached the upstream).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOKENS = ["The", " answer", " is", " 42", "."]
HUGE_BYTES = 1 << 20
TRICKLE_TOKENS = [f" w{i}" for i in range(20)]
RECEIVED: list[dict[str, Any]] = []
ABANDONED: list[str] = []  # the models whose client left before they answered
_CALLS: dict[str, int] = {}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that replaces the value at a dotted path of a choice, where there is one
    ("logprobs.content.0.logprob"); `...` deletes the key."""
    *head, last = path.split(".")

    def mutate(choice: dict[str, Any]) -> None:
        node: Any = choice
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node.get(part)
            if node is None:
                return
        key: Any = int(last) if isinstance(node, list) else last
        if (key >= len(node)) if isinstance(node, list) else (key not in node):
            return
        if value is ...:
            node.pop(key, None) if isinstance(node, dict) else node.pop(key)
        else:
            node[key] = value
    return mutate


def _each(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(choice: dict[str, Any]) -> None:
        for m in mutations:
            m(choice)
    return mutate


#: ways an upstream answer can be malformed, each applied to every choice of an answer (the
#: chat and the completions variant of each case)
MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "content-int": _each(_set("message.content", 5), _set("delta.content", 5), _set("text", 5)),
    "message-str": _each(_set("message", "hi"), _set("delta", ["hi"]), _set("text", ["hi"])),
    "lp-ragged": _each(_set("logprobs.content.0.logprob", ...),
                       _set("logprobs.token_logprobs", [])),
    "lp-string": _each(_set("logprobs.content.0.logprob", "high"),
                       _set("logprobs.token_logprobs.0", "high")),
    "lp-null": _each(_set("logprobs.content.0.logprob", None), _set("logprobs.tokens.0", None)),
    "lp-not-list": _each(_set("logprobs.content", "x"), _set("logprobs.tokens", 7)),
    "lp-nested": _each(_set("logprobs.content.0.logprob", [[-1.0]]),
                       _set("logprobs.token_logprobs.0", [-1.0])),
    "top-not-list": _each(_set("logprobs.content.0.top_logprobs", 3),
                          _set("logprobs.top_logprobs", [1, 2])),
    "top-entry-str": _each(_set("logprobs.content.0.top_logprobs.0", "x"),
                           _set("logprobs.top_logprobs.0", {"x": "y"})),
    "token-int": _each(_set("logprobs.content.0.token", 3), _set("logprobs.tokens.0", 3)),
    "finish-int": _set("finish_reason", 7),
    "logprobs-list": _set("logprobs", [1]),
    "usage-list": lambda c: None,  # the answer's usage, not a choice: see _break
}
MODELS = ["ok", "ok-low", "error500", "slow", "badjson", "cutstream", "flaky", "huge", "varied",
          "trickle", *(f"bad-{case}" for case in MALFORMED)]
_LOGPROB_IN_PROMPT = re.compile(r"logprob=(-?[0-9.]+)")
_DELAY_IN_PROMPT = re.compile(r"delay=([0-9.]+)")


def _lp(model: str, body: dict[str, Any] | None = None) -> float:
    if model == "varied" and body is not None:
        found = _LOGPROB_IN_PROMPT.search(str(body.get("messages") or body.get("prompt")))
        return float(found.group(1)) if found else -0.05
    return -4.0 if model == "ok-low" else -0.05


def _delay(model: str, body: dict[str, Any]) -> float:
    """Seconds before each streamed token (`trickle` only)."""
    if model != "trickle":
        return 0.0
    found = _DELAY_IN_PROMPT.search(str(body.get("messages") or body.get("prompt")))
    return float(found.group(1)) if found else 0.05


def _tokens(model: str) -> list[str]:
    if model == "trickle":
        return TRICKLE_TOKENS
    if model == "huge":  # about HUGE_BYTES of text, in 64 KiB tokens
        return ["x" * (64 << 10)] * (HUGE_BYTES // (64 << 10) + 1)
    return TOKENS


def chat_lp_entry(tok: str, lp: float, k: int) -> dict[str, Any]:
    alts = [{"token": tok, "logprob": lp, "bytes": list(tok.encode())}]
    alts += [{"token": f"alt{j}", "logprob": lp - 1.0 - j, "bytes": list(f"alt{j}".encode())}
             for j in range(max(0, k - 1))]
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": alts[:k]}


def completion_lp(tokens: list[str], lp: float, k: int, start: int = 0) -> dict[str, Any]:
    offsets, pos = [], start
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"text_offset": offsets, "token_logprobs": [lp] * len(tokens), "tokens": list(tokens),
            "top_logprobs": [{t: lp, **{f"alt{j}": lp - 1.0 - j for j in range(k - 1)}}
                             for t in tokens]}


def error_body(message: str, status: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": "InternalServerError", "param": None,
                      "code": status}}


def usage(n: int) -> dict[str, Any]:
    return {"prompt_tokens": 7, "total_tokens": 7 + n, "completion_tokens": n,
            "prompt_tokens_details": None}


def _break(model: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The answer (or chunk) as model `bad-<case>` sends it."""
    case = MALFORMED.get(model.removeprefix("bad-"))
    if case is not None:
        for choice in obj.get("choices") or []:
            case(choice)
        if model == "bad-usage-list":
            obj["usage"] = [1, 2]
    return obj


async def _misbehave(model: str, request: Request) -> Response | None:
    _CALLS[model] = _CALLS.get(model, 0) + 1
    if model == "error500":
        return JSONResponse(error_body("EngineCore encountered an issue.", 500), status_code=500)
    if model == "flaky" and _CALLS[model] % 2 == 1:
        return JSONResponse(error_body("warming up", 503), status_code=503)
    if model == "slow":
        for _ in range(100):  # 5 s, unless the client leaves first
            if await request.is_disconnected():
                ABANDONED.append(model)
                return Response(status_code=499)
            await asyncio.sleep(0.05)
    if model == "badjson":
        return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
    return None


async def chat(request: Request) -> Response:
    body = await request.json()
    RECEIVED.append(body)
    model = body["model"]
    bad = await _misbehave(model, request)
    if bad is not None:
        return bad
    k = int(body.get("top_logprobs") or 0)
    lp = _lp(model, body)
    delay = _delay(model, body)
    rid, created = "chatcmpl-fake", int(time.time())
    if body.get("stream"):
        async def events() -> AsyncIterator[bytes]:
            def chunk(choices: list[Any], **extra: Any) -> bytes:
                return b"data: " + orjson.dumps(_break(model, {
                    "id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": choices, **extra})) + b"\n\n"
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                          "logprobs": None, "finish_reason": None}])
            for i, tok in enumerate(_tokens(model)):
                if model == "cutstream" and i == 2:
                    raise RuntimeError("connection dropped")  # uvicorn closes mid-body
                if delay:
                    await asyncio.sleep(delay)
                yield chunk([{"index": 0, "delta": {"content": tok},
                              "logprobs": None if model == "huge"
                              else {"content": [chat_lp_entry(tok, lp, k)]},
                              "finish_reason": None}])
            yield chunk([{"index": 0, "delta": {"content": ""}, "logprobs": None,
                          "finish_reason": "stop", "stop_reason": None}])
            if (body.get("stream_options") or {}).get("include_usage"):
                yield chunk([], usage=usage(len(_tokens(model))))
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")
    tokens = _tokens(model)
    await asyncio.sleep(delay * len(tokens))
    return JSONResponse(_break(model, {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": None,
                                             "content": "".join(tokens), "tool_calls": []},
                     "logprobs": None if model == "huge"
                     else {"content": [chat_lp_entry(t, lp, k) for t in tokens]},
                     "finish_reason": "stop", "stop_reason": None}],
        "usage": usage(len(tokens)), "prompt_logprobs": None,
    }))


async def completions(request: Request) -> Response:
    body = await request.json()
    RECEIVED.append(body)
    model = body["model"]
    bad = await _misbehave(model, request)
    if bad is not None:
        return bad
    k = int(body.get("logprobs") or 0)
    lp = _lp(model, body)
    delay = _delay(model, body)
    rid, created = "cmpl-fake", int(time.time())
    if body.get("stream"):
        async def events() -> AsyncIterator[bytes]:
            pos = 0
            for i, tok in enumerate(_tokens(model)):
                if model == "cutstream" and i == 2:
                    raise RuntimeError("connection dropped")
                if delay:
                    await asyncio.sleep(delay)
                yield b"data: " + orjson.dumps(_break(model, {
                    "id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": tok,
                                 "logprobs": None if model == "huge"
                                 else completion_lp([tok], lp, k, pos),
                                 "finish_reason": None, "stop_reason": None}]})) + b"\n\n"
                pos += len(tok)
            yield b"data: " + orjson.dumps(_break(model, {
                "id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop",
                             "stop_reason": None}]})) + b"\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield b"data: " + orjson.dumps(_break(model, {
                    "id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [], "usage": usage(len(_tokens(model)))})) + b"\n\n"
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")
    tokens = _tokens(model)
    await asyncio.sleep(delay * len(tokens))
    return JSONResponse(_break(model, {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": "".join(tokens),
                     "logprobs": None if model == "huge" else completion_lp(tokens, lp, k),
                     "finish_reason": "stop",
                     "stop_reason": None, "prompt_logprobs": None}],
        "usage": usage(len(tokens)),
    }))


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [
        {"id": m, "object": "model", "created": 0, "owned_by": "vllm", "root": m,
         "parent": None, "max_model_len": 2048} for m in MODELS]})


def fake_vllm_app() -> Starlette:
    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ])

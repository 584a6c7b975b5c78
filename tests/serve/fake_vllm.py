"""A fake vLLM OpenAI server (a real Starlette app on loopback) returning vLLM's exact shapes.

Behaviour is picked by the requested model name:
    ok / ok-low    a normal answer (token logprob -0.05 / -4.0)
    error500       500 with vLLM's error body
    slow           sleeps 5 s before answering (for timeouts)
    badjson        200 with a body that is not JSON
    cutstream      streams two chunks, then drops the connection without [DONE]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOKENS = ["The", " answer", " is", " 42", "."]
MODELS = ["ok", "ok-low", "error500", "slow", "badjson", "cutstream"]


def _lp(model: str) -> float:
    return -4.0 if model == "ok-low" else -0.05


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
    return {"text_offset": offsets, "token_logprobs": [lp] * len(tokens), "tokens": tokens,
            "top_logprobs": [{t: lp, **{f"alt{j}": lp - 1.0 - j for j in range(k - 1)}}
                             for t in tokens]}


def error_body(message: str, status: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": "InternalServerError", "param": None,
                      "code": status}}


def usage(n: int) -> dict[str, Any]:
    return {"prompt_tokens": 7, "total_tokens": 7 + n, "completion_tokens": n,
            "prompt_tokens_details": None}


async def _misbehave(model: str) -> Response | None:
    if model == "error500":
        return JSONResponse(error_body("EngineCore encountered an issue.", 500), status_code=500)
    if model == "slow":
        await asyncio.sleep(5)
    if model == "badjson":
        return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
    return None


async def chat(request: Request) -> Response:
    body = await request.json()
    model = body["model"]
    bad = await _misbehave(model)
    if bad is not None:
        return bad
    k = int(body.get("top_logprobs") or 0)
    lp = _lp(model)
    rid, created = "chatcmpl-fake", int(time.time())
    if body.get("stream"):
        async def events() -> AsyncIterator[bytes]:
            def chunk(choices: list[Any], **extra: Any) -> bytes:
                return b"data: " + orjson.dumps({"id": rid, "object": "chat.completion.chunk",
                                                 "created": created, "model": model,
                                                 "choices": choices, **extra}) + b"\n\n"
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                          "logprobs": None, "finish_reason": None}])
            for i, tok in enumerate(TOKENS):
                if model == "cutstream" and i == 2:
                    raise RuntimeError("connection dropped")  # uvicorn closes mid-body
                yield chunk([{"index": 0, "delta": {"content": tok},
                              "logprobs": {"content": [chat_lp_entry(tok, lp, k)]},
                              "finish_reason": None}])
            yield chunk([{"index": 0, "delta": {"content": ""}, "logprobs": None,
                          "finish_reason": "stop", "stop_reason": None}])
            if (body.get("stream_options") or {}).get("include_usage"):
                yield chunk([], usage=usage(len(TOKENS)))
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": None,
                                             "content": "".join(TOKENS), "tool_calls": []},
                     "logprobs": {"content": [chat_lp_entry(t, lp, k) for t in TOKENS]},
                     "finish_reason": "stop", "stop_reason": None}],
        "usage": usage(len(TOKENS)), "prompt_logprobs": None,
    })


async def completions(request: Request) -> Response:
    body = await request.json()
    model = body["model"]
    bad = await _misbehave(model)
    if bad is not None:
        return bad
    k = int(body.get("logprobs") or 0)
    lp = _lp(model)
    rid, created = "cmpl-fake", int(time.time())
    if body.get("stream"):
        async def events() -> AsyncIterator[bytes]:
            pos = 0
            for i, tok in enumerate(TOKENS):
                if model == "cutstream" and i == 2:
                    raise RuntimeError("connection dropped")
                yield b"data: " + orjson.dumps({
                    "id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": tok,
                                 "logprobs": completion_lp([tok], lp, k, pos),
                                 "finish_reason": None, "stop_reason": None}]}) + b"\n\n"
                pos += len(tok)
            yield b"data: " + orjson.dumps({
                "id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop",
                             "stop_reason": None}]}) + b"\n\n"
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse({
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": "".join(TOKENS),
                     "logprobs": completion_lp(TOKENS, lp, k), "finish_reason": "stop",
                     "stop_reason": None, "prompt_logprobs": None}],
        "usage": usage(len(TOKENS)),
    })


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

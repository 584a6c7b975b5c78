"""A minimal, fast fake vLLM upstream for `bench/overhead.py`: raw asyncio, loopback only.

    python bench/_fake_upstream.py [--port 0] [--delay-ms 20] [--tokens 16] [--top-logprobs 5]

Answers `POST /v1/chat/completions` (and `/v1/completions`) with vLLM's exact shapes, logprobs
included (chat: `logprobs.content[]` with `bytes` and `top_logprobs`; SSE chunks with logprobs,
then `data: [DONE]`), after a fixed delay. The alternatives are as many as the request asks
(chat `top_logprobs`, completions `logprobs`; 0: the chosen tokens' logprobs only, as vLLM), at
most `--top-logprobs`, which is also what a chat request with `logprobs: true` and no k gets;
a request that asks for no logprobs gets none, as from vLLM (the direct call of overhead.py).
Streamed answers send every chunk after the delay, one write each (`--token-interval-ms` spaces
them). Bodies are built once per k, so the upstream spends microseconds per request and the
proxies in front of it are what is measured. Prints `port N` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from typing import Any

import orjson

HOST = "127.0.0.1"
WORDS = ["The", " answer", " is", " 42", ",", " as", " the", " docs", " say", "."]


def _chat_entry(tok: str, lp: float, k: int) -> dict[str, Any]:
    alts = [{"token": tok, "logprob": lp, "bytes": list(tok.encode())}]
    alts += [{"token": f"alt{j}", "logprob": lp - 1.0 - j, "bytes": list(f"alt{j}".encode())}
             for j in range(k - 1)]
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": alts[:k]}


def _completion_lp(tokens: list[str], lp: float, k: int, start: int) -> dict[str, Any]:
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=start))
    return {"text_offset": offsets, "token_logprobs": [lp] * len(tokens), "tokens": tokens,
            "top_logprobs": [{t: lp, **{f"alt{j}": lp - 1.0 - j for j in range(k - 1)}}
                             for t in tokens]}


def _usage(n: int) -> dict[str, Any]:
    return {"prompt_tokens": 12, "total_tokens": 12 + n, "completion_tokens": n,
            "prompt_tokens_details": None}


def _head(status: str, extra: str) -> bytes:
    return f"HTTP/1.1 {status}\r\nserver: fake-vllm\r\n{extra}\r\n".encode()


def _json_response(obj: Any, status: str = "200 OK") -> bytes:
    body = orjson.dumps(obj)
    head = f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return _head(status, head) + body


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _sse(obj: Any) -> bytes:
    return _chunk(b"data: " + orjson.dumps(obj) + b"\n\n")


class Answers:
    """Every response this upstream sends, as ready bytes: (head + body) or (head, [chunks])."""

    def __init__(self, *, model: str, tokens: int, top_logprobs: int | None,
                 lp: float = -0.05) -> None:
        toks = [WORDS[i % len(WORDS)] for i in range(tokens)]
        k = top_logprobs or 0
        with_lp = top_logprobs is not None  # None: the request asked for no logprobs
        text = "".join(toks)
        self.chat = _json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": None,
                                                 "content": text, "tool_calls": []},
                         "logprobs": {"content": [_chat_entry(t, lp, k) for t in toks]}
                         if with_lp else None,
                         "finish_reason": "stop", "stop_reason": None}],
            "usage": _usage(tokens), "prompt_logprobs": None})
        self.completion = _json_response({
            "id": "cmpl-fake", "object": "text_completion", "created": 1, "model": model,
            "choices": [{"index": 0, "text": text,
                         "logprobs": _completion_lp(toks, lp, k, 0) if with_lp else None,
                         "finish_reason": "stop", "stop_reason": None, "prompt_logprobs": None}],
            "usage": _usage(tokens)})
        self.stream_head = _head("200 OK", "content-type: text/event-stream; charset=utf-8\r\n"
                                           "cache-control: no-cache\r\n"
                                           "transfer-encoding: chunked\r\n")
        chat = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": model}
        self.chat_chunks = [_sse({**chat, "choices": [{
            "index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}]})]
        self.chat_chunks += [_sse({**chat, "choices": [{
            "index": 0, "delta": {"content": t},
            "logprobs": {"content": [_chat_entry(t, lp, k)]} if with_lp else None,
            "finish_reason": None}]}) for t in toks]
        self.chat_chunks.append(_sse({**chat, "choices": [{
            "index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": "stop",
            "stop_reason": None}]}))
        self.chat_usage = _sse({**chat, "choices": [], "usage": _usage(tokens)})
        comp = {"id": "cmpl-fake", "object": "text_completion", "created": 1, "model": model}
        starts = list(itertools.accumulate((len(t) for t in toks[:-1]), initial=0))
        self.completion_chunks = [_sse({**comp, "choices": [{
            "index": 0, "text": t, "logprobs": _completion_lp([t], lp, k, s) if with_lp else None,
            "finish_reason": None, "stop_reason": None}]}) for t, s in zip(toks, starts,
                                                                              strict=True)]
        self.completion_chunks.append(_sse({**comp, "choices": [{
            "index": 0, "text": "", "logprobs": None, "finish_reason": "stop",
            "stop_reason": None}]}))
        self.completion_usage = _sse({**comp, "choices": [], "usage": _usage(tokens)})
        self.done = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.models = _json_response({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "vllm", "root": model,
             "parent": None, "max_model_len": 4096}]})
        self.health = _head("200 OK", "content-length: 0\r\n")
        self.not_found = _json_response({"error": {"message": "not found", "type": "NotFound",
                                                   "param": None, "code": 404}}, "404 Not Found")
        self.bad = _json_response({"error": {"message": "bad request", "type": "BadRequestError",
                                             "param": None, "code": 400}}, "400 Bad Request")


class AnswersByK:
    """The `Answers` for each top-k a request asks for (built once per k, on first use), at
    most `cap`. As vLLM: a chat request without `logprobs: true` (a completions request without
    `logprobs`) gets no logprobs at all; one that asks without naming a k gets `cap`."""

    def __init__(self, *, model: str, tokens: int, cap: int) -> None:
        self.model, self.tokens, self.cap = model, tokens, cap
        self._built: dict[int | None, Answers] = {}
        self.default = self.get(cap)

    def get(self, k: int | None) -> Answers:
        k = None if k is None else max(0, min(k, self.cap))
        if k not in self._built:
            self._built[k] = Answers(model=self.model, tokens=self.tokens, top_logprobs=k)
        return self._built[k]

    def for_request(self, req: Any, chat: bool) -> Answers:
        """Example: chat {"logprobs": true, "top_logprobs": 0} -> no alternatives; {} -> no
        logprobs; {"logprobs": true} -> `cap` alternatives."""
        if chat:
            if req.get("logprobs") is not True:
                return self.get(None)
            k = req.get("top_logprobs")
        else:
            k = req.get("logprobs")
            if k is None:
                return self.get(None)
        return self.get(k) if type(k) is int else self.default


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order."""

    def __init__(self, answers: AnswersByK, delay_s: float, interval_s: float) -> None:
        self.answers = answers
        self.delay_s = delay_s
        self.interval_s = interval_s
        self.buf = bytearray()
        self.busy = False
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        while not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ", 2)[:2]
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip().lower()
            if "chunked" in headers.get("transfer-encoding", ""):
                parsed = _dechunk(self.buf, end + 4)
                if parsed is None:
                    return
                body, used = parsed
            else:
                used = end + 4 + int(headers.get("content-length") or 0)
                if len(self.buf) < used:
                    return
                body = bytes(self.buf[end + 4:used])
            del self.buf[:used]
            self.busy = True
            self._answer(method, path.split("?", 1)[0], body,
                         close=headers.get("connection") == "close")

    def _answer(self, method: str, path: str, body: bytes, *, close: bool) -> None:
        a = self.answers.default
        if method == "GET":
            out = a.models if path.endswith("/models") else a.health
            self._send([out], close)
            return
        chat = path.endswith("/chat/completions")
        if method != "POST" or not (chat or path.endswith("/completions")):
            self._send([a.not_found], close)
            return
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._send([a.bad], close)
            return
        if isinstance(req, dict):
            a = self.answers.for_request(req, chat)
        else:
            req = {}
        if not req.get("stream"):
            self.loop.call_later(self.delay_s, self._send, [a.chat if chat else a.completion],
                                 close)
            return
        parts = [a.stream_head, *(a.chat_chunks if chat else a.completion_chunks)]
        if (req.get("stream_options") or {}).get("include_usage"):
            parts.append(a.chat_usage if chat else a.completion_usage)
        parts.append(a.done)
        if self.interval_s <= 0:
            self.loop.call_later(self.delay_s, self._send, parts, close)
        else:
            self.loop.call_later(self.delay_s, self._send_spaced, parts, close)

    def _send(self, parts: list[bytes], close: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        for p in parts:  # one write per chunk, as a server streaming tokens does
            t.write(p)
        self._finish(close)

    def _send_spaced(self, parts: list[bytes], close: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(parts[0])
        if len(parts) == 1:
            self._finish(close)
        else:
            self.loop.call_later(self.interval_s, self._send_spaced, parts[1:], close)

    def _finish(self, close: bool) -> None:
        self.busy = False
        if close and self.transport is not None:
            self.transport.close()
            return
        if self.buf:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked request body from `buf[start:]`: (body, end offset), or None if incomplete.

    Example: b"3\\r\\nabc\\r\\n0\\r\\n\\r\\n" -> (b"abc", 15)
    """
    out, pos = bytearray(), start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)
            return (bytes(out), end + 4) if end >= 0 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        out += buf[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


async def serve(*, port: int, delay_s: float, interval_s: float, answers: AnswersByK) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(answers, delay_s, interval_s), HOST, port,
                                      backlog=4096)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--token-interval-ms", type=float, default=0.0)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--top-logprobs", type=int, default=5,
                    help="the most alternatives sent, and what a request naming none gets")
    ap.add_argument("--model", default="m")
    args = ap.parse_args()
    answers = AnswersByK(model=args.model, tokens=args.tokens, cap=args.top_logprobs)
    try:
        asyncio.run(serve(port=args.port, delay_s=args.delay_ms / 1000,
                          interval_s=args.token_interval_ms / 1000, answers=answers))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

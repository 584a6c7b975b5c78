"""The floor of `bench/overhead.py`: the least a Python proxy on the router's own stack does.

    python bench/_floor_proxy.py --port 8010 --upstream http://127.0.0.1:8001/v1 --key sk-... \
        [--top-logprobs 0]

One raw ASGI app on uvicorn (uvloop, httptools), as `router serve` runs: it checks the bearer
key, asks the upstream for the same answer the router asks for (logprobs; top 0 as the router
under `bench/overhead.py`'s mean_logprob policy and `top_logprobs: auto`) through the
router's HTTP client (`router.backends.http1`), and answers with the upstream's text (a whole
answer: its JSON parsed and a small one written; a stream: the upstream's pieces passed on as
they come). No cascade, no scoring, no metrics, no framework. What the router adds over this is
the cost of what it does; what this adds over the direct call is the cost of any proxy in
Python on this machine.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson
import uvicorn

from router.backends import http1

HEADERS = [(b"content-type", b"application/json")]
STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def make_app(upstream: str, key: str, top_logprobs: int = 0) -> Any:
    pool = http1.Pool(upstream.rstrip("/") + "/", headers={"content-type": "application/json"})
    expected = f"Bearer {key}".encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await pool.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401, "headers": HEADERS})
            await send({"type": "http.response.body", "body": b'{"error": "key"}'})
            return
        req = orjson.loads(body)
        stream = bool(req.get("stream"))
        ask = {"model": "m", "messages": req["messages"], "max_tokens": req.get("max_tokens"),
               "temperature": req.get("temperature", 0.0), "logprobs": True,
               "top_logprobs": top_logprobs, "stream": stream}
        async with pool.request("POST", "chat/completions", orjson.dumps(ask),
                                timeout_s=None if stream else 60.0,
                                quiet_s=60.0 if stream else None) as resp:
            if not stream:
                answer = orjson.loads(await resp.read(8 << 20))
                out = orjson.dumps({
                    "id": "floor", "object": "chat.completion", "created": int(time.time()),
                    "model": req.get("model"), "choices": [{
                        "index": 0, "message": answer["choices"][0]["message"],
                        "finish_reason": answer["choices"][0]["finish_reason"]}],
                    "usage": answer.get("usage")})
                await send({"type": "http.response.start", "status": 200,
                            "headers": [*HEADERS, (b"content-length", str(len(out)).encode())]})
                await send({"type": "http.response.body", "body": out})
                return
            await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
            async for piece in resp.chunks():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8001/v1")
    ap.add_argument("--key", required=True)
    ap.add_argument("--top-logprobs", type=int, default=0, help="the alternatives asked for")
    args = ap.parse_args()
    uvicorn.run(make_app(args.upstream, args.key, args.top_logprobs), host="127.0.0.1",
                port=args.port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()

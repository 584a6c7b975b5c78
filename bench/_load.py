"""The load generator of `bench/overhead.py`, run as its own process: closed-loop HTTP/1.1 load on
loopback, one keep-alive connection per concurrent client, bounded in count and time.

    echo '{"port": 8000, "path": "/v1/chat/completions", "body": "...", "concurrency": 16,
           "max_requests": 2000, "seconds": 8, "warmup_s": 1, "stream": false}' \
        | python bench/_load.py      # -> one JSON line of results on stdout

A raw asyncio client rather than httpx, so that the client spends few microseconds per request
and the server side is what is measured. A request counts as an error when the connection
fails, it times out, the status is not 200, or a streamed answer does not end in `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    ttfb: list[float] = field(default_factory=list)  # seconds to the first body byte
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    first_start: float = 0.0
    last_end: float = 0.0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of an unsorted list. Example: ([3, 1, 2], 0.5) -> 2"""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


class _Client:
    def __init__(self, port: int, request: bytes, timeout_s: float, stream: bool) -> None:
        self.port = port
        self.request = request
        self.timeout_s = timeout_s
        self.stream = stream
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port,
                                                                     limit=1 << 22)
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def one(self, tally: Tally) -> None:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                first, status, data, keep = await self._exchange()
        except TimeoutError:
            self.close()
            tally.error("timeout")
            return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:
            self.close()
            tally.error(f"{type(exc).__name__}: {exc}"[:200])
            return
        t1 = time.perf_counter()
        if not keep:
            self.close()
        if status != 200:
            tally.error(f"HTTP {status}: {data[:160]!r}")
        elif self.stream and b"data: [DONE]" not in data[-64:]:
            tally.error(f"stream without [DONE]: {data[-160:]!r}")
        elif not self.stream and b'"choices"' not in data:
            tally.error(f"no choices: {data[:160]!r}")
        else:
            tally.latencies.append(t1 - t0)
            tally.ttfb.append(first - t0)
        tally.last_end = t1

    async def _exchange(self) -> tuple[float, int, bytes, bool]:
        """One request: (time of the first body byte, status, body, keep-alive)."""
        reader, writer = await self._connect()
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        first = time.perf_counter()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip().lower()
        keep = headers.get("connection") != "close"
        if "chunked" in headers.get("transfer-encoding", ""):
            parts = []
            got_first = False
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers: the closing blank line
                    break
                parts.append(await reader.readexactly(size + 2))
                if not got_first:
                    first, got_first = time.perf_counter(), True
            data = b"".join(p[:-2] for p in parts)
        elif "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        else:
            data = await reader.read()
            keep = False
        return first, status, data, keep


def build_request(port: int, path: str, body: bytes, auth: str = "x") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: {HOST}:{port}\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {auth}\r\naccept: */*\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    conc = int(spec["concurrency"])
    request = build_request(spec["port"], spec["path"], spec["body"].encode(),
                            spec.get("auth", "x"))
    clients = [_Client(spec["port"], request, float(spec.get("timeout_s", 30.0)),
                       bool(spec["stream"])) for _ in range(conc)]

    async def phase(seconds: float, max_requests: int) -> Tally:
        tally = Tally()
        issued = 0
        deadline = time.perf_counter() + seconds

        async def worker(c: _Client) -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                await c.one(tally)

        tally.first_start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        return tally

    warm = await phase(float(spec.get("warmup_s", 1.0)), int(spec.get("warmup_requests", 10**6)))
    cpu0 = time.process_time()
    t = await phase(float(spec["seconds"]), int(spec["max_requests"]))
    cpu = time.process_time() - cpu0
    for c in clients:
        c.close()
    ok = len(t.latencies)
    elapsed = max(t.last_end - t.first_start, 1e-9)
    ms = 1000.0
    return {
        "concurrency": conc, "stream": bool(spec["stream"]), "ok": ok, "errors": t.errors,
        "error_samples": t.error_samples, "warmup_requests": len(warm.latencies) + warm.errors,
        "elapsed_s": round(elapsed, 3), "rps": round(ok / elapsed, 1),
        "p50_ms": round(percentile(t.latencies, 0.50) * ms, 3),
        "p90_ms": round(percentile(t.latencies, 0.90) * ms, 3),
        "p99_ms": round(percentile(t.latencies, 0.99) * ms, 3),
        "mean_ms": round(sum(t.latencies) / ok * ms, 3) if ok else float("nan"),
        "ttfb_p50_ms": round(percentile(t.ttfb, 0.50) * ms, 3),
        "client_cpu_ms_per_req": round(cpu / max(ok + t.errors, 1) * ms, 3),
    }


def main() -> None:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run_cell(spec))), flush=True)


if __name__ == "__main__":
    main()

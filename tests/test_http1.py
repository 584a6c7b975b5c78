"""`router.backends.http1` against real servers on loopback that send exactly the bytes a test
scripts: framings, keep-alive reuse, the stale-connection race, timeouts, read-ahead, TLS."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from router.backends import http1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head[0], headers, body


def answer(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def chunked(*parts: bytes) -> bytes:
    out = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
           b"transfer-encoding: chunked\r\n\r\n")
    for p in parts:
        out += f"{len(p):x}\r\n".encode() + p + b"\r\n"
    return out + b"0\r\n\r\n"


@asynccontextmanager
async def server(handler: Handler, ssl_ctx: ssl.SSLContext | None = None
                 ) -> AsyncIterator[tuple[str, list[int]]]:
    """(base URL, the number of connections accepted so far in a one-item list)."""
    accepted = [0]

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test is over
        finally:
            writer.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=ssl_ctx)
    port = srv.sockets[0].getsockname()[1]
    scheme = "https" if ssl_ctx else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}/v1/", accepted
    finally:
        srv.close()
        await srv.wait_closed()


def answer_once(data: bytes, *, abort: bool = False) -> Handler:
    """A handler that reads one request, writes `data` and ends the connection (with `abort`
    as a reset, without a `connection: close` header: what an idle timeout does)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(data)
        await writer.drain()
        if abort:
            writer.transport.abort()

    return handler


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line, _, body = await read_request(reader)
        writer.write(answer(b'{"echo": %d, "line": "%s"}' % (len(body), line.encode())))
        await writer.drain()


async def test_a_post_gets_its_answer_and_the_connection_is_reused() -> None:
    async with server(keep_answering) as (url, accepted):
        pool = http1.Pool(url, headers={"authorization": "Bearer k"})
        for _ in range(3):
            async with pool.request("POST", "chat/completions", b"abc", timeout_s=5) as resp:
                assert resp.status == 200
                assert resp.headers["content-type"] == "application/json"
                assert await resp.read(1000) == (
                    b'{"echo": 3, "line": "POST /v1/chat/completions HTTP/1.1"}')
        async with pool.request("GET", "models", timeout_s=5) as resp:
            assert b"GET /v1/models" in await resp.read(1000)
        assert accepted[0] == 1
        await pool.aclose()


async def test_the_request_carries_host_length_and_the_callers_headers() -> None:
    seen: list[dict[str, str]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers, body = await read_request(reader)
        seen.append(headers)
        writer.write(answer(body))

    async with server(handler) as (url, _):
        pool = http1.Pool(url, headers={"Authorization": "Bearer k"})
        async with pool.request("POST", "completions", b"{}", timeout_s=5) as resp:
            assert await resp.read(100) == b"{}"
        await pool.aclose()
    h = seen[0]
    assert h["host"] == url.split("/")[2] and h["content-length"] == "2"
    assert h["authorization"] == "Bearer k" and h["accept-encoding"] == "identity"


async def test_chunked_answers_arrive_piece_by_piece() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        whole = chunked(b"data: 1\n\n", b"data: 2\n\n")
        cut = whole.index(b"data: 2") - 4
        writer.write(whole[:cut])
        await release.wait()
        writer.write(whole[cut:])
        await keep_answering(reader, writer)

    async with server(handler) as (url, accepted):
        pool = http1.Pool(url)
        async with pool.request("POST", "x", b"{}", quiet_s=5) as resp:
            pieces = resp.chunks()
            assert await anext(pieces) == b"data: 1\n\n"  # before the rest was even sent
            release.set()
            assert b"".join([p async for p in pieces]) == b"data: 2\n\n"
        async with pool.request("POST", "x", b"{}", timeout_s=5) as resp:  # reused after it
            assert resp.status == 200 and b"echo" in await resp.read(100)
        assert accepted[0] == 1
        await pool.aclose()


async def test_a_body_delimited_by_the_end_of_the_connection() -> None:
    handler = answer_once(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
    async with server(handler) as (url, _):
        pool = http1.Pool(url)
        async with pool.request("POST", "x", b"{}", timeout_s=5) as resp:
            assert await resp.read(100) == b"all of it"
        assert not pool._idle  # not kept: the server closed it
        await pool.aclose()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_answer_is_decoded_and_capped_after_decoding(encoding: str) -> None:
    plain = b'{"x": "' + b"a" * 5000 + b'"}'
    packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(packed, extra=f"content-encoding: {encoding}\r\n"))

    async with server(handler) as (url, _):
        pool = http1.Pool(url)
        async with pool.request("POST", "x", b"{}", timeout_s=5) as resp:
            assert await resp.read(10_000) == plain
        async with pool.request("POST", "x", b"{}", timeout_s=5) as resp:
            with pytest.raises(http1.BodyTooBig):
                await resp.read(1000)  # packed is ~50 bytes: the cap counts what it decodes to
        await pool.aclose()


async def test_a_stale_pooled_connection_is_replaced_once() -> None:
    """The server closes each connection after one answer without saying so (an idle
    keep-alive timeout that races the next request): the next request goes out anew."""
    async with server(answer_once(answer(b"ok"), abort=True)) as (url, accepted):
        pool = http1.Pool(url)
        for _ in range(3):
            async with pool.request("POST", "x", b"{}", timeout_s=5) as resp:
                assert await resp.read(10) == b"ok"
            # no pause: the next request often goes out before the close arrives
        assert accepted[0] == 3
        await pool.aclose()


async def test_a_server_that_drops_a_fresh_connection_is_disconnected() -> None:
    handler = answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly a part")
    async with server(handler) as (url, _):
        pool = http1.Pool(url)
        async with pool.request("POST", "x", b"{}", timeout_s=5) as resp:
            with pytest.raises(http1.Disconnected):
                await resp.read(1000)
        await pool.aclose()


async def test_refused_connections_and_bad_bytes_are_errors_of_the_tree() -> None:
    async with server(keep_answering) as (url, _):
        pass  # closed: nothing listens on that port now
    pool = http1.Pool(url, connect_timeout_s=2)
    with pytest.raises(http1.ConnectError, match="cannot connect"):
        async with pool.request("POST", "x", b"{}", timeout_s=5):
            pass

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with server(garbage) as (url, _):
        pool = http1.Pool(url)
        with pytest.raises(http1.ProtocolError):
            async with pool.request("POST", "x", b"{}", timeout_s=5):
                pass
        await pool.aclose()


async def test_the_total_timeout_and_the_silence_timeout() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(20):  # a piece every 0.1 s: never silent for long, but long in all
            writer.write(b"2\r\nok\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(b"0\r\n\r\n")

    async with server(slow) as (url, _):
        pool = http1.Pool(url)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with pool.request("POST", "x", b"{}", timeout_s=0.5) as resp:
            with pytest.raises(TimeoutError):
                await resp.read(1000)
        assert 0.4 < loop.time() - t0 < 3.0  # upper bounds leave room for a loaded machine
        async with pool.request("POST", "x", b"{}", quiet_s=1.5) as resp:  # never 1.5 s quiet
            assert await resp.read(1000) == b"ok" * 20
        await pool.aclose()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n")
        await asyncio.sleep(5)

    async with server(silent) as (url, _):
        pool = http1.Pool(url)
        async with pool.request("POST", "x", b"{}", quiet_s=0.3) as resp:
            pieces = resp.chunks()
            assert await anext(pieces) == b"ok"
            await asyncio.sleep(0.6)  # the caller is busy: that silence is not the server's
            t0 = loop.time()
            with pytest.raises(TimeoutError):
                await anext(pieces)
            assert 0.2 < loop.time() - t0 < 3.0
        await pool.aclose()


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    piece = b"x" * 65536
    n = 64  # 4 MiB, 16x the read-ahead

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(n):
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with server(flood) as (url, _):
        pool = http1.Pool(url)
        got = 0
        most = 0
        async with pool.request("POST", "x", b"{}", quiet_s=5) as resp:
            async for data in resp.chunks():
                got += len(data)
                most = max(most, len(data))
                await asyncio.sleep(0.002)
        assert got == n * len(piece)
        assert most <= http1.READ_AHEAD_BYTES + 2 * (1 << 17)  # paused near the limit
        await pool.aclose()


async def test_a_cancelled_request_closes_its_connection() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async with server(never) as (url, _):
        pool = http1.Pool(url)

        async def ask() -> None:
            async with pool.request("POST", "x", b"{}", timeout_s=30) as resp:
                await resp.read(100)

        task = asyncio.create_task(ask())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not pool._idle
        await pool.aclose()


async def test_an_answer_left_unread_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nok")
        await asyncio.sleep(0.3)
        writer.write(b"ok")
        await keep_answering(reader, writer)

    async with server(handler) as (url, accepted):
        pool = http1.Pool(url)
        async with pool.request("POST", "x", b"{}", timeout_s=5) as resp:
            assert resp.status == 200  # the body is not whole, and not read
        async with pool.request("POST", "x", b"{}", timeout_s=5) as resp:
            await resp.read(100)
        assert accepted[0] == 2
        await pool.aclose()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


async def test_https_upstreams_are_verified(tls_files: tuple[Path, Path]) -> None:
    key, cert = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with server(keep_answering, server_ctx) as (url, _):
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = http1.Pool(url, ssl_context=trusting)
        async with pool.request("POST", "x", b"{}", timeout_s=5) as resp:
            assert b"echo" in await resp.read(100)
        await pool.aclose()
        pool = http1.Pool(url)  # the system's CAs do not know this certificate
        with pytest.raises(http1.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            async with pool.request("POST", "x", b"{}", timeout_s=5):
                pass
        await pool.aclose()


def test_a_pool_outlives_its_event_loop() -> None:
    """Connections made on one event loop are dropped, not reused, on the next (their loop is
    closed): the pool connects anew."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from tests.harness.server_thread import ServerThread

    async def models(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    with ServerThread(Starlette(routes=[Route("/v1/models", models)])) as srv:
        pool = http1.Pool(f"{srv.url}/v1/")

        async def one() -> bytes:
            async with pool.request("GET", "models", timeout_s=5) as resp:
                return await resp.read(10)

        assert asyncio.run(one()) == b"ok"
        assert len(pool._idle) == 1  # kept, on a loop that is closed now
        assert asyncio.run(one()) == b"ok"

"""A small HTTP/1.1 client for the router's upstreams: keep-alive pools on asyncio + httptools.

    pool = Pool("http://127.0.0.1:8001/v1/", headers={"authorization": "Bearer x"})
    async with pool.request("POST", "chat/completions", body, timeout_s=60.0) as resp:
        resp.status, await resp.read(8 << 20)          # or: async for piece in resp.chunks()
    await pool.aclose()

Why not aiohttp: on the request path of `router serve` aiohttp's client was a fifth of the
router's CPU per request (building a `ClientRequest`, its header writers, its stream reader and
a timeout context per request, all in Python). Here a request is one pre-built head plus the
body in one write, the answer is parsed by llhttp (httptools, which uvicorn already uses for
the server side), and the timeouts are one timer per request. It does only what upstreams of
an OpenAI-compatible router need: POST and GET, `Content-Length` or chunked answers, gzip or
deflate if a server compresses anyway, TLS for `https://` URLs, bounded read-ahead on streams.

Errors, the module's whole tree (the backend translates them to `UpstreamError`s):

    HttpError
     + ConnectError      the connection could not be made (refused, DNS, connect timeout)
     + Disconnected      the server closed the connection before the answer was whole
     + ProtocolError     the bytes are not HTTP/1.1 (or not decodable content)
     + BodyTooBig        an answer longer than `Response.read`'s cap
    TimeoutError         the total time or the silence between chunks ran out (builtin)

A connection goes back to the pool only when its answer was read to the end with keep-alive;
anything else (an error, a cancelled request, an answer left unread) closes it. A request that
finds a pooled connection closed by the server before any byte of the answer arrived (the race
of an idle keep-alive timeout) is sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import copy
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

#: idle connections older than this are not reused: below the 5 s keep-alive of uvicorn, which
#: vLLM's OpenAI server runs on, so the server does not close one just as a request goes out
DEFAULT_KEEPALIVE_S = 4.0
#: a stream's read-ahead: past this many unread bytes the socket is paused until they are read
READ_AHEAD_BYTES = 1 << 18


class HttpError(Exception):
    """Base of the client's errors."""


class ConnectError(HttpError):
    """The connection could not be made."""


class Disconnected(HttpError):
    """The server closed the connection before its answer was whole."""


class ProtocolError(HttpError):
    """The server's bytes are not a valid HTTP/1.1 answer."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the answer being read on it (one request at a time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self.used = False  # has carried a request before (a pooled one)
        self._parser: httptools.HttpResponseParser | None = None  # see connection_made
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.received = 0  # bytes of this answer on the wire
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.last_data = self.loop.time()
        self.wait_since = 0.0  # when the caller last began to wait

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        # the parser holds this connection's callbacks, and so the connection: made here, not
        # in __init__ (a refused connection never gets one) and dropped when the connection
        # is lost, so that no connection leaves a cycle for the collector
        self._parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.last_data = self.loop.time()
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]  # made before any data
        except httptools.HttpParserError as exc:
            self.fail(ProtocolError(f"not an HTTP/1.1 answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._parser = None
        if not self.complete and self.error is None:
            if self.headers_done and self._until_close():
                self.complete = True  # a body delimited by the end of the connection
            else:
                self.error = Disconnected("the server closed the connection before the answer "
                                          "was whole" + (f" ({exc})" if exc else ""))
        self._wake()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # its own callback
        self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._buffered += len(body)
        if self._buffered > READ_AHEAD_BYTES and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- the reading side -------------------------------------------------------------------

    def _until_close(self) -> bool:
        h = self.headers
        return "content-length" not in h and "chunked" not in h.get("transfer-encoding", "")

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def failure(self) -> BaseException:
        """`error`, to raise: a copy, whose traceback (frames that hold this connection) the
        connection does not hold. Raising `error` itself made a cycle per failed answer, left
        to the collector (whose collections pause the server)."""
        assert self.error is not None
        return copy.copy(self.error)

    def fail(self, error: BaseException) -> None:
        """End the answer with `error` (a timeout, bad bytes) and drop the connection."""
        if self.error is None and not self.complete:
            self.error = error
        self.close()
        self._wake()

    @property
    def waiting(self) -> bool:
        """Whether the caller waits for the server now (rather than being busy)."""
        return self._waiter is not None

    async def wait(self) -> None:
        """Until something new happens: headers, a piece of body, the end or an error."""
        self.wait_since = self.loop.time()
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> bytes | None:
        """The body bytes read so far and not yet taken (None if there are none)."""
        if not self._pieces:
            return None
        data = self._pieces.popleft() if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        if self._paused and self.transport is not None and not self.lost:
            self._paused = False
            self.transport.resume_reading()
        return data

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.last_data = self.loop.time()  # silence counts from the request
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.close()
            except RuntimeError:  # its event loop is closed already (a pool used on a new one)
                pass
        self.lost = True

    def recycle(self, now: float) -> None:
        self._begin()
        self.used = True
        self.idle_since = now


class Response:
    """The answer to one request: `status`, `headers` (lower-case names), then the body."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        encoding = conn.headers.get("content-encoding", "identity").lower()
        self._inflate = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(wbits=47)  # gzip or zlib, by the header bytes
        elif encoding != "identity":
            raise ProtocolError(f"the answer's content-encoding {encoding!r} is not supported")

    @property
    def content_length(self) -> int | None:
        """The declared length of the (encoded) body, if any."""
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (decoded)."""
        conn = self._conn
        while True:
            data = conn.take()
            if data is not None:
                if self._inflate is not None:
                    try:
                        data = self._inflate.decompress(data)
                    except zlib.error as exc:
                        raise ProtocolError(f"the answer's body does not decompress: {exc}"
                                            ) from None
                if data:
                    yield data
                continue
            if conn.error is not None:
                raise conn.failure()
            if conn.complete:
                return
            await conn.wait()

    async def read(self, cap: int, *, truncate: bool = False) -> bytes:
        """The whole body, at most `cap` bytes of it (decoded): past that BodyTooBig is raised,
        or with `truncate` the first bytes are returned (for error bodies)."""
        parts: list[bytes] = []
        seen = 0
        async for piece in self.chunks():
            parts.append(piece)
            seen += len(piece)
            if seen > cap:
                if truncate:
                    break
                raise BodyTooBig(cap)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class BodyTooBig(HttpError):
    """An answer longer than the reader's cap."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"the answer is over {cap} bytes")


class _Timer:
    """A request's deadline (`total_s`) and its limit on silence while waiting (`quiet_s`), on
    one loop timer that re-arms itself rather than one per chunk."""

    def __init__(self, conn: _Connection, total_s: float | None, quiet_s: float | None) -> None:
        self.conn = conn
        loop = conn.loop
        now = loop.time()
        self.deadline = now + total_s if total_s is not None else None
        self.quiet_s = quiet_s
        self.handle: asyncio.TimerHandle | None = None
        self._arm(now)

    def _quiet_since(self) -> float:
        """Since when the server has been silent while the caller waits for it: the later of
        its last bytes and the start of the wait (a busy caller's time is not silence)."""
        return max(self.conn.last_data, self.conn.wait_since)

    def _arm(self, now: float) -> None:
        due = [self.deadline] if self.deadline is not None else []
        if self.quiet_s is not None:
            due.append((self._quiet_since() if self.conn.waiting else now) + self.quiet_s)
        if due:
            self.handle = self.conn.loop.call_at(min(due), self._check)

    def _check(self) -> None:
        now = self.conn.loop.time()
        if self.deadline is not None and now >= self.deadline:
            self.conn.fail(TimeoutError("the upstream did not answer in time"))
            return
        if (self.quiet_s is not None and self.conn.waiting
                and now - self._quiet_since() >= self.quiet_s):
            self.conn.fail(TimeoutError(f"the upstream sent nothing for {self.quiet_s} s"))
            return
        self._arm(now)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


class Pool:
    """Keep-alive connections to one server, reused last-in first-out; at most `max_idle` are
    kept idle (the caller bounds how many are busy)."""

    def __init__(self, base_url: str, *, headers: Mapping[str, str] | None = None,
                 connect_timeout_s: float = 5.0, keepalive_s: float = DEFAULT_KEEPALIVE_S,
                 max_idle: int = 64, ssl_context: ssl.SSLContext | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" \
            else None
        self.base_path = (url.path.rstrip("/") + "/") if url.path else "/"
        netloc = url.netloc.rsplit("@", 1)[-1]
        fixed = {"host": netloc, "user-agent": "cascade-router", "accept-encoding": "identity",
                 **{k.lower(): v for k, v in (headers or {}).items()}}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._heads: dict[tuple[str, str], str] = {}
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def _head(self, method: str, path: str) -> str:
        key = (method, path)
        head = self._heads.get(key)
        if head is None:
            target = path if path.startswith("/") else self.base_path + path
            head = self._heads[key] = f"{method} {target} HTTP/1.1\r\n{self._fixed}"
        return head

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None)
        except TimeoutError:
            raise ConnectError(f"connecting to {self.host}:{self.port} took over "
                               f"{self.connect_timeout_s} s") from None
        except OSError as exc:
            # its traceback holds asyncio's frames, and on Python 3.11 one of them holds the
            # future that holds this error: a cycle per failed connection, left to the collector
            exc.__traceback__ = None
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return conn

    async def _acquire(self) -> _Connection:
        if self.closed:
            raise ConnectError("the client is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # connections belong to the loop that made them
            self._drop_idle()
            self._loop = loop
        now = loop.time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.lost and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return await self._connect()

    def _release(self, conn: _Connection) -> None:
        if (conn.complete and conn.error is None and conn.keep_alive and not conn.lost
                and not self.closed and len(self._idle) < self.max_idle):
            conn.recycle(conn.loop.time())
            self._idle.append(conn)
        else:
            conn.close()

    def _drop_idle(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def request(self, method: str, path: str, body: bytes = b"", *,
                timeout_s: float | None = None, quiet_s: float | None = None) -> _Exchange:
        """`async with pool.request(...) as response`: send one request (`path` relative to
        the base URL unless it starts with '/') and get its answer once the headers are in.
        `timeout_s` bounds everything up to the end of the body, `quiet_s` the silence while
        the caller waits for more of it."""
        head = self._head(method, path)
        data = (f"{head}content-length: {len(body)}\r\n\r\n".encode("latin-1") + body
                if body or method == "POST" else f"{head}\r\n".encode("latin-1"))
        return _Exchange(self, data, timeout_s, quiet_s)

    async def aclose(self) -> None:
        self.closed = True
        self._drop_idle()


class _Exchange:
    """One request on a pooled connection, as an async context manager (a class, not a
    generator-based one: it is on every upstream call)."""

    __slots__ = ("_conn", "_data", "_pool", "_quiet_s", "_timeout_s", "_timer")

    def __init__(self, pool: Pool, data: bytes, timeout_s: float | None,
                 quiet_s: float | None) -> None:
        self._pool = pool
        self._data = data
        self._timeout_s = timeout_s
        self._quiet_s = quiet_s
        self._conn: _Connection | None = None
        self._timer: _Timer | None = None

    async def __aenter__(self) -> Response:
        for attempt in (0, 1):
            conn = await self._pool._acquire()
            reused = conn.used
            conn.send(self._data)
            timer = _Timer(conn, self._timeout_s, self._quiet_s)
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.failure()
                    await conn.wait()
                response = Response(conn)
            except Disconnected:
                timer.cancel()
                conn.close()
                if reused and attempt == 0 and conn.received == 0:
                    continue  # a pooled connection the server had closed: once more, anew
                raise
            except BaseException:
                timer.cancel()
                conn.close()
                raise
            self._conn, self._timer = conn, timer
            return response
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._conn is not None:
            self._pool._release(self._conn)

"""A client that goes away stops its request's work at once.

    async with cancelled_on_disconnect(receive):
        ...   # cancelled when `http.disconnect` arrives; the cancellation leaves as
              # ClientDisconnected

The body runs in the request's own task; one plain asyncio task waits for `http.disconnect` and
cancels it, so whatever the body awaits (the cascade, an upstream call, a send) is cancelled
where it stands and its `finally` blocks close the upstream connections. The hot lane wraps the
two API endpoints in it (everything before the first byte: the whole cascade of a non-stream
answer), `EventStreamResponse` the sending of a stream. ProtectionMiddleware counts a request
that ends in ClientDisconnected with status 499, nginx's "client closed request".

`receive` must have nothing more to hand out than the disconnect: read the request body first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import Receive


class ClientDisconnected(Exception):
    """The client closed the connection before its request was answered."""


@asynccontextmanager
async def cancelled_on_disconnect(receive: Receive) -> AsyncIterator[None]:
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server that cannot say: the request just runs to its end
            return
        gone = True
        task.cancel()  # the task waits in the body: that is the only time this task runs

    watcher = asyncio.create_task(watch())
    try:
        yield
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:  # ours, and nobody else's (a shutdown) too
            raise ClientDisconnected from None
        raise
    finally:
        watcher.cancel()
    if gone:  # the body swallowed the cancellation: the client is gone all the same
        task.uncancel()
        raise ClientDisconnected

"""Notice that a synchronous client hung up, so its still-queued job can be dropped.

Starlette's `Request.is_disconnected()` peeks at the connection with an already-cancelled
scope, and behind a `BaseHTTPMiddleware` (our `process_time` middleware) that peek never sees
the message: it always answers False. Instead, a small task waits on `receive()` (after the
body was read, the only message left is `http.disconnect`) and raises a flag.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Awaitable, Callable

from fastapi import Request


@contextlib.asynccontextmanager
async def watch_disconnect(request: Request) -> AsyncIterator[Callable[[], Awaitable[bool]]]:
    """Yields an async `disconnected()` check that stays valid while the block runs."""
    gone = asyncio.Event()

    async def listen() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            continue
        gone.set()

    async def disconnected() -> bool:
        return gone.is_set()

    watcher = asyncio.create_task(listen(), name="disconnect watch")
    try:
        yield disconnected
    finally:
        watcher.cancel()

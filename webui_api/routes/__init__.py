"""HTTP routes, one module per family. FastAPI stops here, in app.py and in auth.py.

Route modules parse, call the generation layer or a service, and shape the answer; they share
only the helpers below, never each other's code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Depends, Request

from ..auth import require_api_auth
from ..runtime import Runtime


def api_router() -> APIRouter:
    """A router whose every route is behind --api-auth (when it is set)."""
    return APIRouter(dependencies=[Depends(require_api_auth)])


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


@contextlib.asynccontextmanager
async def watch_disconnect(request: Request) -> AsyncIterator[Callable[[], Awaitable[bool]]]:
    """Yields an async `disconnected()` check that stays valid while the block runs, so a
    synchronous client's still-queued job can be dropped when it hangs up.

    Starlette's `Request.is_disconnected()` peeks at the connection with an already-cancelled
    scope, and behind a `BaseHTTPMiddleware` (our `process_time` middleware) that peek never
    sees the message: it always answers False. Instead, a small task waits on `receive()`
    (after the body was read, the only message left is `http.disconnect`) and raises a flag."""
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

"""Checkpoint unload/reload and the --api-server-stop routes."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

from ..runtime import Runtime
from ..scheduler import PRIORITY_HIGH, WorkItem
from ..settings import Settings
from . import api_router, get_runtime


def build_router(settings: Settings) -> APIRouter:
    router = api_router()
    router.add_api_route("/sdapi/v1/unload-checkpoint", unload_checkpoint, methods=["POST"])
    router.add_api_route("/sdapi/v1/reload-checkpoint", reload_checkpoint, methods=["POST"])
    if settings.api_server_stop:
        router.add_api_route("/sdapi/v1/server-kill", server_kill, methods=["POST"])
        router.add_api_route("/sdapi/v1/server-restart", server_restart, methods=["POST"])
        router.add_api_route("/sdapi/v1/server-stop", server_stop, methods=["POST"])
    return router


async def unload_checkpoint(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    await runtime.scheduler.run(WorkItem(run=lambda _: runtime.engine.unload(), label="unload"), PRIORITY_HIGH)
    return {}


async def reload_checkpoint(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    title = runtime.options.get("sd_model_checkpoint")
    await runtime.scheduler.run(WorkItem(run=lambda _: runtime.engine.load(title), label="reload"), PRIORITY_HIGH)
    return {}


async def server_kill() -> None:
    """A1111 calls os._exit(0): the connection drops without an answer."""
    os._exit(0)


async def server_restart() -> Response:
    """Not restartable without a supervisor that relaunches us: A1111 answers 501 then."""
    return Response(status_code=501)


async def server_stop(request: Request, runtime: Runtime = Depends(get_runtime)) -> PlainTextResponse:
    """Interrupt the running job and ask the server to shut down after this answer is sent."""
    runtime.scheduler.interrupt()
    stop = getattr(request.app.state, "request_shutdown", None)
    if stop is not None:
        asyncio.get_running_loop().call_later(0.2, stop)
    return PlainTextResponse("Stopping.")

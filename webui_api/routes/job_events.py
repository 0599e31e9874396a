"""Pushed progress of one job: Server-Sent Events and a WebSocket, for any task id.

`GET /sdapi/v1/progress/{task_id}/events` (SSE) and `/sdapi/v1/progress/{task_id}/ws` (WebSocket)
send the same ordered events (`status`, `progress`, then `done`, after which the stream ends)
for a synchronous request sent with `force_task_id` or an async task. A stream may be opened
before the job is submitted: it waits (state "waiting") up to `wait` seconds for the id to show
up. docs/api-compat.md describes the protocol.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from ..auth import Forbidden, identify, request_caller
from ..errors import ApiError
from ..runtime import Runtime
from ..serving.groups import route_group
from ..serving.keys import Caller
from ..task_progress import Viewer, job_events, queue_order
from . import api_router, get_runtime

router = api_router()
websocket_router = APIRouter()  # authenticated inside: HTTP dependencies do not apply to WebSockets
EVENTS_PATH = "/sdapi/v1/progress/{task_id}/events"
WEBSOCKET_PATH = "/sdapi/v1/progress/{task_id}/ws"
MAX_WAIT_SECONDS = 3600.0
POLICY_VIOLATION = 1008  # WebSocket close code for a refused caller


def _pending(app: Any, runtime: Runtime) -> Any:
    runner = getattr(app.state, "task_runner", None)
    store = runner.store if runner is not None else None
    return lambda: queue_order(runtime.scheduler, store)


def _events(
    app: Any, runtime: Runtime, task_id: str, previews: bool, wait: float, caller: Caller,
) -> AsyncIterator[Any]:
    wait = min(max(wait, 0.0), MAX_WAIT_SECONDS)
    viewer = Viewer.of(caller)
    return job_events(runtime.progress, task_id, _pending(app, runtime), previews=previews, wait_seconds=wait,
                      viewer=viewer)


@router.get(EVENTS_PATH, response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def job_event_stream(
    task_id: str, request: Request, runtime: Annotated[Runtime, Depends(get_runtime)],
    previews: Annotated[bool, Query(description="include live preview images (data URIs) in progress events")] = True,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False,
                                 description="seconds to wait for a task id that is not known yet")] = 300.0,
) -> StreamingResponse:
    """Server-Sent Events of one job: `status`, `progress`, then `done`; the stream then ends."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: do not buffer the stream
    events = _events(request.app, runtime, task_id, previews, wait, request_caller(request))
    return StreamingResponse(_sse(events), media_type="text/event-stream", headers=headers)


async def _sse(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for item in events:
        if item is None:
            yield ": keep-alive\n\n"  # a comment line: proxies keep the connection open
        else:
            name, data = item
            yield f"event: {name}\ndata: {json.dumps(data)}\n\n"


@websocket_router.websocket(WEBSOCKET_PATH)
async def job_websocket(websocket: WebSocket, task_id: str, previews: bool = True, wait: float = 300.0) -> None:
    """The same events as the SSE route, one JSON text message each: {"event": name, "data": {...}}."""
    try:
        caller = _caller(websocket)
    except ApiError as exc:
        await websocket.close(code=POLICY_VIOLATION, reason=exc.detail[:120])  # a close reason: at most 123 bytes
        return
    await websocket.accept()
    runtime: Runtime = websocket.app.state.runtime
    try:
        async for item in _events(websocket.app, runtime, task_id, previews, wait, caller):
            if item is not None:
                await websocket.send_json({"event": item[0], "data": item[1]})
    except WebSocketDisconnect:
        return
    await websocket.close()


def _caller(websocket: WebSocket) -> Caller:
    """The caller, checked as the API's HTTP routes check it (keys / Basic auth, route
    groups); raises the ApiError that would refuse an HTTP request."""
    caller = identify(websocket, websocket.app.state.gate)
    group = route_group(WEBSOCKET_PATH)
    if group not in caller.groups:
        raise Forbidden(f"The key {caller.name!r} may not call {group!r} routes")
    return caller

"""Async tasks at agent-scheduler's routes (`/agent-scheduler/v1/*`).

Clients that cannot hold an HTTP request open for a whole generation (proxies cut them off)
queue a task, get `{"task_id"}` at once, and poll. Answers follow the agent-scheduler
extension: `{"success": true, "data": ...}`, and an unknown id is `{"success": false,
"message": "Task not found"}` with HTTP 200, like the extension (clients test `success`).

The runner behind them (webui_api.generation.task_runner) runs persisted tasks through the
same generation layer as the synchronous routes, so a task's images equal a synchronous
request's.

Per-task progress streams as Server-Sent Events from `/task/{id}/events`.

Tenant isolation: with API keys or --api-auth, a task belongs to the caller that queued it;
other callers get "Task not found" for it and do not see it in /queue (admin-tier keys see
all). Without auth every caller sees every task, as with agent-scheduler. Disk is capped by
--task-max-count and --task-max-mb (oldest finished tasks go first); /queue pages are at most
MAX_PAGE tasks and list parameters without image data.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..auth import request_caller, request_context
from ..errors import BadRequest, ServiceUnavailable
from ..generation.task_runner import TaskRunner, callback_files, result_entries
from ..schemas.generation import Img2ImgRequest, Txt2ImgRequest
from ..serving.audit import scrub
from ..serving.keys import Caller
from ..task_callback import check_callback_url
from ..tasks import DONE, FINISHED, PENDING, RUNNING, TaskRecord
from . import api_router

router = api_router()
PREFIX = "/agent-scheduler/v1"
NOT_FOUND = {"success": False, "message": "Task not found"}
SSE_KEEPALIVE_SECONDS = 15.0
MAX_PAGE = 100  # tasks per /queue answer, whatever `limit` asks
_QUEUE_EXTRAS = {"checkpoint", "vae", "callback_url", "priority"}


class QueueTxt2ImgRequest(Txt2ImgRequest):
    """A1111's txt2img body plus agent-scheduler's extras."""

    checkpoint: str | None = None
    vae: str | None = None
    callback_url: str | None = None
    priority: int | str | None = None


class QueueImg2ImgRequest(Img2ImgRequest):
    """A1111's img2img body plus agent-scheduler's extras."""

    checkpoint: str | None = None
    vae: str | None = None
    callback_url: str | None = None
    priority: int | str | None = None


def get_runner(request: Request) -> TaskRunner:
    return request.app.state.task_runner


# queueing --------------------------------------------------------------------------------------


def task_params(body: QueueTxt2ImgRequest | QueueImg2ImgRequest) -> dict[str, Any]:
    """The stored request: agent-scheduler's `checkpoint` and `vae` become override_settings."""
    params = body.model_dump(exclude=_QUEUE_EXTRAS)
    overrides = dict(params.get("override_settings") or {})
    if body.checkpoint:
        overrides["sd_model_checkpoint"] = body.checkpoint
    if body.vae:
        overrides["sd_vae"] = body.vae
    params["override_settings"] = overrides
    return params


async def enqueue(task_type: str, body: Any, http: Request, runner: TaskRunner) -> dict[str, str]:
    """Check and persist a task: everything the synchronous route would refuse (guards,
    content policy, samplers, scripts, images), the callback URL and the store's caps are
    refused now, not when it runs."""
    from ..generation.runs import check_before_queueing

    caller = request_caller(http)
    if body.callback_url:
        check_callback_url(body.callback_url, runner.runtime.settings.callback_allow, caller.identity)
    context = request_context(http, body.priority)
    params = task_params(body)
    request_type = Img2ImgRequest if task_type == "img2img" else Txt2ImgRequest
    await check_before_queueing(task_type, request_type.model_validate(params), runner.runtime, context)
    if not runner.has_room():
        raise ServiceUnavailable("The async task store is full (--task-max-count / --task-max-mb); try again later")
    task = runner.store.create(task_type, params, body.callback_url, tier=context.priority, owner=context.owner)
    runner.runtime.progress.claim(task.id, caller.identity)  # per-job progress follows the tasks' ownership
    runner.wake()
    return {"task_id": task.id}


@router.post(f"{PREFIX}/queue/txt2img")
async def queue_txt2img(
    body: QueueTxt2ImgRequest, http: Request, runner: TaskRunner = Depends(get_runner)
) -> dict[str, str]:
    return await enqueue("txt2img", body, http, runner)


@router.post(f"{PREFIX}/queue/img2img")
async def queue_img2img(
    body: QueueImg2ImgRequest, http: Request, runner: TaskRunner = Depends(get_runner)
) -> dict[str, str]:
    if not body.init_images:
        raise BadRequest("Init image not found", errors="img2img tasks need init_images")
    return await enqueue("img2img", body, http, runner)


# reading ---------------------------------------------------------------------------------------


def owned_task(runner: TaskRunner, task_id: str, caller: Caller) -> TaskRecord | None:
    """The task when it exists and `caller` may see it; None otherwise (the same answer, so
    another caller's task ids cannot be probed)."""
    task = runner.store.get(task_id)
    return task if task is not None and caller.owns(task.owner) else None


def task_view(task: TaskRecord, runner: TaskRunner, listing: bool = False) -> dict[str, Any]:
    """agent-scheduler's TaskModel fields; `result` holds the error text of a failed task.
    In a listing the parameters come without image data and the callback URL is left out."""
    return {
        "id": task.id, "api_task_id": None, "api_task_callback": None if listing else task.callback_url, "name": None,
        "type": task.type, "status": task.status, "params": scrub(task.params) if listing else task.params,
        "priority": task.priority, "position": runner.store.position(task), "result": task.error, "bookmarked": False,
        "created_at": _iso(task.created_at), "updated_at": _iso(task.updated_at),
    }


def _iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


@router.get(f"{PREFIX}/queue")
async def queue_status(
    limit: int = 20, offset: int = 0, runner: TaskRunner = Depends(get_runner),
    caller: Caller = Depends(request_caller),
) -> dict[str, Any]:
    """The pending line, a page of at most MAX_PAGE tasks; a caller sees only its own tasks
    (and the running one only when it is its own) unless it may see all."""
    owner = None if caller.sees_all_tasks else caller.identity
    page = min(max(limit, 0), MAX_PAGE)
    pending = runner.store.pending(limit=page, offset=min(max(offset, 0), 2**62), owner=owner)
    current = runner.current_task_id
    if current is not None and owned_task(runner, current, caller) is None:
        current = None
    return {
        "current_task_id": current,
        "pending_tasks": [task_view(task, runner, listing=True) for task in pending],
        "total_pending_tasks": runner.store.count(PENDING, owner=owner),
        "paused": False,
    }


@router.get(PREFIX + "/task/{task_id}")
async def get_task(
    task_id: str, runner: TaskRunner = Depends(get_runner), caller: Caller = Depends(request_caller),
) -> dict[str, Any]:
    task = owned_task(runner, task_id, caller)
    return {"success": True, "data": task_view(task, runner)} if task else NOT_FOUND


@router.get(PREFIX + "/task/{task_id}/position")
async def get_position(
    task_id: str, runner: TaskRunner = Depends(get_runner), caller: Caller = Depends(request_caller),
) -> dict[str, Any]:
    task = owned_task(runner, task_id, caller)
    if task is None:
        return NOT_FOUND
    return {"success": True, "data": {"status": task.status, "position": runner.store.position(task)}}


@router.get(PREFIX + "/task/{task_id}/events")
async def task_events(
    task_id: str, interval: float = Query(0.5, allow_inf_nan=False), runner: TaskRunner = Depends(get_runner),
    caller: Caller = Depends(request_caller),
) -> Any:
    """Server-Sent Events: `status` on every status change (with the queue position), `progress`
    while the task's job is on the device (its own counters, /internal/progress's fraction and
    eta; no preview image; /sdapi/v1/progress/{id}/events has previews), and a final
    `done` event once the task is finished (or deleted); then the stream ends."""
    if owned_task(runner, task_id, caller) is None:
        return NOT_FOUND
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: do not buffer the stream
    stream = task_event_stream(task_id, runner, min(max(interval, 0.1), 10.0))
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def task_event_stream(task_id: str, runner: TaskRunner, interval: float) -> AsyncIterator[str]:
    """Poll the store and the progress tracker; emit only what changed."""
    last_status, last_progress, quiet_since = None, None, time.monotonic()
    while True:
        task = runner.store.get(task_id)
        if task is None:
            yield sse("done", {"task_id": task_id, "status": "deleted"})
            return
        events = []
        if task.status != last_status:
            last_status = task.status
            events.append(sse("status", {"task_id": task_id, "status": task.status,
                                         "position": runner.store.position(task)}))
        progress = running_progress(task_id, runner)
        if progress is not None and progress != last_progress:
            last_progress = progress
            events.append(sse("progress", {"task_id": task_id, **progress}))
        if task.status in FINISHED:
            events.append(sse("done", {"task_id": task_id, "status": task.status, "error": task.error}))
        for event in events:
            yield event
        if task.status in FINISHED:
            return
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > SSE_KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"  # a comment line: proxies keep the connection open
        await asyncio.sleep(interval)


def running_progress(task_id: str, runner: TaskRunner) -> dict[str, Any] | None:
    """Progress of the task while it is on the device (its own job's counters); None otherwise."""
    view = runner.runtime.progress.view(task_id)
    if not view.active:
        return None
    return {
        "progress": view.fraction, "eta_relative": view.eta,
        "sampling_step": view.sampling_step, "sampling_steps": view.sampling_steps,
        "job_no": view.job_no, "job_count": view.job_count, "textinfo": view.textinfo,
    }


@router.get(PREFIX + "/task/{task_id}/results")
@router.get(PREFIX + "/results/{task_id}")
async def get_results(
    task_id: str, zip: bool = False, runner: TaskRunner = Depends(get_runner), caller: Caller = Depends(request_caller),
) -> Any:
    task = owned_task(runner, task_id, caller)
    if task is None:
        return NOT_FOUND
    if task.status != DONE:
        return {"success": False, "message": f"Task is {task.status}"}
    result = await run_in_threadpool(runner.store.result, task_id)
    if result is None:
        return {"success": False, "message": "Task result is not available"}
    entries = result_entries(result)
    return zip_response(task_id, entries) if zip else {"success": True, "data": entries}


# deleting --------------------------------------------------------------------------------------


@router.delete(PREFIX + "/task/{task_id}")
@router.post(PREFIX + "/delete/{task_id}")
async def delete_task(
    task_id: str, runner: TaskRunner = Depends(get_runner), caller: Caller = Depends(request_caller),
) -> dict[str, Any]:
    """agent-scheduler's semantics: the running task is interrupted, any other one deleted."""
    task = owned_task(runner, task_id, caller)
    if task is None:
        return NOT_FOUND
    if task.status == RUNNING and runner.interrupt(task_id):
        return {"success": True, "message": "Task interrupted"}
    runner.store.delete(task_id)
    return {"success": True, "message": "Task deleted"}


# result formats --------------------------------------------------------------------------------

def zip_response(task_id: str, entries: list[dict[str, str]]) -> StreamingResponse:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for item in callback_files(task_id, entries):
            archive.writestr(item.name, item.content)
    buffer.seek(0)
    headers = {"Content-Disposition": f'attachment; filename="{task_id}.zip"'}
    return StreamingResponse(buffer, media_type="application/zip", headers=headers)

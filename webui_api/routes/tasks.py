"""Async tasks at agent-scheduler's routes (`/agent-scheduler/v1/*`), and the runner behind them.

Clients that cannot hold an HTTP request open for a whole generation (proxies cut them off)
queue a task, get `{"task_id"}` at once, and poll. Answers follow the agent-scheduler
extension: `{"success": true, "data": ...}`, and an unknown id is `{"success": false,
"message": "Task not found"}` with HTTP 200, like the extension (clients test `success`).

The `TaskRunner` feeds persisted tasks to the scheduler one at a time, through the same
`run_txt2img` / `run_img2img` as the synchronous routes, so a task's images equal a
synchronous request's. It also applies the retention policy: finished tasks older than
--task-retention-hours are deleted with their result files, at start and then hourly.

Per-task progress streams as Server-Sent Events from `/task/{id}/events`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
import zipfile
from typing import Any, AsyncIterator, Optional, Union

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..auth import request_context
from ..errors import ApiError, BadRequest
from ..schemas.generation import Img2ImgRequest, Txt2ImgRequest
from ..services import Services
from ..serving.context import RequestContext
from ..task_callback import CallbackFile, check_callback_url, post_callback
from ..progress import COMPLETED, JobOutcome
from ..task_progress import task_scope
from ..tasks import DONE, FAILED, FINISHED, PENDING, RUNNING, TaskRecord, TaskStore
from . import api_router

log = logging.getLogger(__name__)

router = api_router()
PREFIX = "/agent-scheduler/v1"
IDLE_POLL_SECONDS = 1.0  # the runner also wakes at once when a task is queued
NOT_FOUND = {"success": False, "message": "Task not found"}
RETENTION_CHECK_SECONDS = 3600.0
SSE_KEEPALIVE_SECONDS = 15.0
_QUEUE_EXTRAS = {"checkpoint", "vae", "callback_url", "priority"}


class QueueTxt2ImgRequest(Txt2ImgRequest):
    """A1111's txt2img body plus agent-scheduler's extras."""

    checkpoint: Optional[str] = None
    vae: Optional[str] = None
    callback_url: Optional[str] = None
    priority: Optional[Union[int, str]] = None


class QueueImg2ImgRequest(Img2ImgRequest):
    """A1111's img2img body plus agent-scheduler's extras."""

    checkpoint: Optional[str] = None
    vae: Optional[str] = None
    callback_url: Optional[str] = None
    priority: Optional[Union[int, str]] = None


REQUEST_TYPES = {"txt2img": Txt2ImgRequest, "img2img": Img2ImgRequest}


# the runner ---------------------------------------------------------------------------------


class TaskRunner:
    """Runs pending tasks in order on the event loop; the device work itself is the scheduler's."""

    def __init__(self, store: TaskStore, services: Services) -> None:
        self.store = store
        self._services = services
        self._wake = asyncio.Event()
        self._loop_task: Optional[asyncio.Task] = None
        self._current: Optional[tuple[str, asyncio.Task]] = None  # (task id, its generation)
        self._stopping = False
        self._next_purge = 0.0  # monotonic time of the next retention pass

    @property
    def services(self) -> Services:
        return self._services

    @property
    def current_task_id(self) -> Optional[str]:
        return self._current[0] if self._current else None

    def start(self) -> None:
        """Recover what a crash left, purge expired results, then run the line."""
        report = self.store.recover()
        if report.requeued or report.failed:
            log.warning("async tasks after restart: %d re-queued, %d failed (died twice)", report.requeued, report.failed)
        self._loop_task = asyncio.create_task(self._run_forever(), name="agent-scheduler runner")
        self._loop_task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        """Stop taking tasks; a task cut short goes back to pending and runs at the next start."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        self.store.close()

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, task_id: str) -> bool:
        """Stop the running task `task_id` (dropped if still queued in the scheduler, interrupted if on the device)."""
        if self._current is None or self._current[0] != task_id:
            return False
        self._current[1].cancel()
        return True

    def purge_expired(self) -> int:
        """Delete finished tasks older than --task-retention-hours (0 keeps them forever)."""
        hours = self._services.settings.task_retention_hours
        if not hours:
            return 0
        purged = self.store.purge_finished(hours * 3600.0)
        if purged:
            log.info("async tasks: %d finished tasks older than %g h purged with their results", purged, hours)
        return purged

    async def _purge_when_due(self) -> None:
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + RETENTION_CHECK_SECONDS
            await run_in_threadpool(self.purge_expired)

    async def _run_forever(self) -> None:
        while True:
            await self._purge_when_due()
            task = self.store.next_pending()
            if task is None:
                await self._sleep_until_woken()
            else:
                await self._run_one(task)

    async def _sleep_until_woken(self) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), IDLE_POLL_SECONDS)
        except asyncio.TimeoutError:
            return

    async def _run_one(self, task: TaskRecord) -> None:
        self.store.mark_running(task.id)
        generation = asyncio.create_task(self._generate(task))
        self._current = (task.id, generation)
        result: Optional[dict[str, Any]] = None
        try:
            result = await generation
            await run_in_threadpool(self.store.finish, task.id, result)
        except asyncio.CancelledError:
            self._after_cancel(task.id, generation)
        except ApiError as exc:  # the request itself was bad, or the engine refused it
            await self._record_failure(task, f"{type(exc).__name__}: {exc.detail}", type(exc).__name__, exc.status_code)
        except Exception as exc:  # an engine bug: recorded on the task (and logged), the runner goes on
            log.exception("async task %s failed", task.id)
            await self._record_failure(task, f"{type(exc).__name__}: {exc}", type(exc).__name__, 500)
        finally:
            self._current = None
        self._report_outcome(task.id, result)
        self._notify(task, result)

    def _report_outcome(self, task_id: str, result: Optional[dict[str, Any]]) -> None:
        """End the task's progress streams (/sdapi/v1/progress/{id}/events) with its outcome."""
        finished = self.store.get(task_id)
        if finished is None or finished.status not in FINISHED:
            return
        reference = None
        if result is not None:
            reference = {"images": len(result.get("images") or []), "href": f"{PREFIX}/task/{task_id}/results"}
        status = COMPLETED if finished.status == DONE else finished.status  # failed and interrupted read the same
        self._services.progress.complete(task_id, JobOutcome(status, error=finished.error, result=reference))

    async def _record_failure(self, task: TaskRecord, error: str, error_type: str, status: int) -> None:
        """A failed task: its status and error in the store, the metrics' error count, the audit log."""
        self.store.fail(task.id, error)
        self._services.metrics.count_error(error_type, status)
        context = RequestContext(caller=task.owner or "anonymous", priority=task.tier, task_id=task.id)
        await self._services.serving.audit_failure(task.type, task.params, context, error)

    def _notify(self, task: TaskRecord, result: Optional[dict[str, Any]]) -> None:
        """Fire the callback in a thread of its own: its retries must not hold up the next task."""
        finished = self.store.get(task.id)
        if not task.callback_url or finished is None or finished.status not in (DONE, FAILED):
            return
        files = callback_files(task.id, result_entries(result)) if result else []
        thread = threading.Thread(
            target=post_callback, args=(task.callback_url, task.id, finished.status, files),
            name=f"callback {task.id}", daemon=True,
        )
        thread.start()

    def _after_cancel(self, task_id: str, generation: asyncio.Task) -> None:
        """Our own stop re-queues the task (and re-raises); a client's DELETE marks it interrupted."""
        if self._stopping:
            generation.cancel()
            self.store.return_to_queue(task_id)
            raise asyncio.CancelledError
        self.store.interrupt(task_id)

    async def _generate(self, task: TaskRecord) -> dict[str, Any]:
        """The same work as the synchronous route, at the tier the task was queued with."""
        from .generate import run_img2img, run_txt2img

        run = run_txt2img if task.type == "txt2img" else run_img2img
        request = REQUEST_TYPES[task.type].model_validate(task.params)
        context = RequestContext(caller=task.owner or "anonymous", priority=task.tier, task_id=task.id)
        if task.owner:
            self._services.progress.claim(task.id, task.owner)  # again after a restart
        with task_scope(task.id):  # the queued job carries the task's id: /internal/progress, event streams
            return await run(request, self._services, guarded=False, context=context)


def _report_crash(loop_task: asyncio.Task) -> None:
    """The runner only ends by cancellation; anything else is a bug that must not pass silently."""
    if not loop_task.cancelled() and loop_task.exception() is not None:
        log.error("the async task runner stopped: %r; queued tasks wait for a restart", loop_task.exception())


def get_runner(request: Request) -> TaskRunner:
    return request.app.state.task_runner


# queueing --------------------------------------------------------------------------------------


def task_params(body: Union[QueueTxt2ImgRequest, QueueImg2ImgRequest]) -> dict[str, Any]:
    """The stored request: agent-scheduler's `checkpoint` and `vae` become override_settings."""
    params = body.model_dump(exclude=_QUEUE_EXTRAS)
    overrides = dict(params.get("override_settings") or {})
    if body.checkpoint:
        overrides["sd_model_checkpoint"] = body.checkpoint
    if body.vae:
        overrides["sd_vae"] = body.vae
    params["override_settings"] = overrides
    return params


def enqueue(task_type: str, body: Any, http: Request, runner: TaskRunner) -> dict[str, str]:
    """Check and persist a task: guards and the callback URL are refused now, not when it runs."""
    if body.callback_url:
        try:
            check_callback_url(body.callback_url)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
    runner.services.serving.check(body)
    context = request_context(http, body.priority)
    task = runner.store.create(task_type, task_params(body), body.callback_url, tier=context.priority, owner=context.caller)
    runner.services.progress.claim(task.id, context.caller)  # with auth on, only its owner follows its progress
    runner.wake()
    return {"task_id": task.id}


@router.post(f"{PREFIX}/queue/txt2img")
async def queue_txt2img(body: QueueTxt2ImgRequest, http: Request, runner: TaskRunner = Depends(get_runner)) -> dict[str, str]:
    return enqueue("txt2img", body, http, runner)


@router.post(f"{PREFIX}/queue/img2img")
async def queue_img2img(body: QueueImg2ImgRequest, http: Request, runner: TaskRunner = Depends(get_runner)) -> dict[str, str]:
    if not body.init_images:
        raise BadRequest("Init image not found", errors="img2img tasks need init_images")
    return enqueue("img2img", body, http, runner)


# reading ---------------------------------------------------------------------------------------


def task_view(task: TaskRecord, runner: TaskRunner) -> dict[str, Any]:
    """agent-scheduler's TaskModel fields; `result` holds the error text of a failed task."""
    return {
        "id": task.id, "api_task_id": None, "api_task_callback": task.callback_url, "name": None,
        "type": task.type, "status": task.status, "params": task.params, "priority": task.priority,
        "position": runner.store.position(task), "result": task.error, "bookmarked": False,
        "created_at": _iso(task.created_at), "updated_at": _iso(task.updated_at),
    }


def _iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


@router.get(f"{PREFIX}/queue")
async def queue_status(limit: int = 20, offset: int = 0, runner: TaskRunner = Depends(get_runner)) -> dict[str, Any]:
    pending = runner.store.pending(limit=limit, offset=offset)
    return {
        "current_task_id": runner.current_task_id,
        "pending_tasks": [task_view(task, runner) for task in pending],
        "total_pending_tasks": runner.store.count(PENDING),
        "paused": False,
    }


@router.get(PREFIX + "/task/{task_id}")
async def get_task(task_id: str, runner: TaskRunner = Depends(get_runner)) -> dict[str, Any]:
    task = runner.store.get(task_id)
    return {"success": True, "data": task_view(task, runner)} if task else NOT_FOUND


@router.get(PREFIX + "/task/{task_id}/position")
async def get_position(task_id: str, runner: TaskRunner = Depends(get_runner)) -> dict[str, Any]:
    task = runner.store.get(task_id)
    if task is None:
        return NOT_FOUND
    return {"success": True, "data": {"status": task.status, "position": runner.store.position(task)}}


@router.get(PREFIX + "/task/{task_id}/events")
async def task_events(task_id: str, interval: float = 0.5, runner: TaskRunner = Depends(get_runner)) -> Any:
    """Server-Sent Events: `status` on every status change (with the queue position), `progress`
    while the task's job is on the device (its own counters, /internal/progress's fraction and
    eta; no preview image; /sdapi/v1/progress/{id}/events has previews), and a final
    `done` event once the task is finished (or deleted); then the stream ends."""
    if runner.store.get(task_id) is None:
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


def running_progress(task_id: str, runner: TaskRunner) -> Optional[dict[str, Any]]:
    """Progress of the task while it is on the device (its own job's counters); None otherwise."""
    view = runner.services.progress.view(task_id)
    if not view.active:
        return None
    return {
        "progress": view.fraction, "eta_relative": view.eta,
        "sampling_step": view.sampling_step, "sampling_steps": view.sampling_steps,
        "job_no": view.job_no, "job_count": view.job_count, "textinfo": view.textinfo,
    }


@router.get(PREFIX + "/task/{task_id}/results")
@router.get(PREFIX + "/results/{task_id}")
async def get_results(task_id: str, zip: bool = False, runner: TaskRunner = Depends(get_runner)) -> Any:
    task = runner.store.get(task_id)
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
async def delete_task(task_id: str, runner: TaskRunner = Depends(get_runner)) -> dict[str, Any]:
    """agent-scheduler's semantics: the running task is interrupted, any other one deleted."""
    task = runner.store.get(task_id)
    if task is None:
        return NOT_FOUND
    if task.status == RUNNING and runner.interrupt(task_id):
        return {"success": True, "message": "Task interrupted"}
    runner.store.delete(task_id)
    return {"success": True, "message": "Task deleted"}


# result formats --------------------------------------------------------------------------------

_MIME_BY_BASE64_START = {"iVBOR": "image/png", "/9j/": "image/jpeg", "UklGR": "image/webp"}


def mime_of(b64: str) -> str:
    """The image type from the first bytes of its base64 (what samples_format produced)."""
    for start, mime in _MIME_BY_BASE64_START.items():
        if b64.startswith(start):
            return mime
    return "image/png"


def result_entries(result: dict[str, Any]) -> list[dict[str, str]]:
    """[{image: data URL, infotext}] like agent-scheduler (data-URL prefixed, unlike /sdapi)."""
    info = json.loads(result.get("info") or "{}")
    infotexts = info.get("infotexts") or []
    images = result.get("images") or []
    return [
        {"image": f"data:{mime_of(b64)};base64,{b64}", "infotext": infotexts[i] if i < len(infotexts) else ""}
        for i, b64 in enumerate(images)
    ]


def callback_files(task_id: str, entries: list[dict[str, str]]) -> list[CallbackFile]:
    import base64

    files = []
    for index, entry in enumerate(entries):
        header, _, b64 = entry["image"].partition(",")
        mime = header[len("data:"):].split(";")[0]
        files.append(CallbackFile(f"{task_id}-{index}.{_extension(mime)}", base64.b64decode(b64), mime))
    return files


def _extension(mime: str) -> str:
    return mime.split("/")[1].replace("jpeg", "jpg")


def zip_response(task_id: str, entries: list[dict[str, str]]) -> StreamingResponse:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for item in callback_files(task_id, entries):
            archive.writestr(item.name, item.content)
    buffer.seek(0)
    headers = {"Content-Disposition": f'attachment; filename="{task_id}.zip"'}
    return StreamingResponse(buffer, media_type="application/zip", headers=headers)

"""A1111's task progress (`modules/progress.py`) and the per-job event streams, without HTTP.

Every generation job has a task id: the request's `force_task_id`, A1111's
`task(txt2img-XXXXXXX)` otherwise, or an async task's id. The route sets it for the duration of
the request with `task_scope`; the scheduler reads `current_task_id` when the job is queued
(a context variable, so the id follows the request through every layer between route and
queue without each having to pass it along).

`internal_progress` answers POST /internal/progress exactly as A1111 does; `job_events` is the
ordered event sequence of one job (status, progress, done) that the SSE and WebSocket routes
send.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .progress import COMPLETED, FAILED, INTERRUPTED, JobOutcome, JobView, ProgressTracker

TASK_ID_CHARS = string.ascii_uppercase + string.digits
TASK_ID_LENGTH = 7
STREAM_POLL_SECONDS = 0.5  # streams re-read the queue at least this often (positions move without a wake)
KEEPALIVE_SECONDS = 15.0
ACTIVE_STATE = "active"
PENDING_TASKS_LISTED = 1000  # async tasks waiting in the store that /internal/pending-tasks lists at most

current_task_id: ContextVar[str | None] = ContextVar("current_task_id", default=None)


def create_task_id(task_type: str) -> str:
    """A1111's id: `task(<type>-<7 of A-Z0-9>)`."""
    suffix = "".join(random.choices(TASK_ID_CHARS, k=TASK_ID_LENGTH))
    return f"task({task_type}-{suffix})"


@contextlib.contextmanager
def task_scope(task_id: str) -> Iterator[str]:
    """Jobs queued inside this block (on this asyncio task) belong to `task_id`."""
    token = current_task_id.set(task_id)
    try:
        yield task_id
    finally:
        current_task_id.reset(token)


def outcome_of_error(exc: BaseException) -> JobOutcome:
    detail = getattr(exc, "detail", None) or str(exc)
    return JobOutcome(FAILED, error=f"{type(exc).__name__}: {detail}")


def result_reference(body: dict[str, Any]) -> dict[str, Any]:
    """Where a synchronous job's result went: the response itself (an image count), plus the
    image URLs when it answered with URLs."""
    images = body.get("images") or []
    urls = [image for image in images if isinstance(image, str) and image.startswith(("http://", "https://"))]
    return {"images": len(images), "urls": urls or None}


async def run_tracked(
    tracker: ProgressTracker,
    task_id: str,
    work: Callable[[], Awaitable[dict[str, Any]]],
    finish: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Run a synchronous generation as task `task_id` (submitted by `owner`, a caller identity): its queued job
    carries the id, and its outcome (after `finish`, e.g. storing URL outputs) ends the job's
    event streams. Errors are recorded on the job and raised on unchanged."""
    if owner is not None:
        tracker.claim(task_id, owner)
    with task_scope(task_id):
        try:
            body = await work()
            if finish is not None:
                body = await finish(body)
        except asyncio.CancelledError:
            tracker.complete(task_id, JobOutcome(INTERRUPTED, error="the request was cancelled"))
            raise
        except Exception as exc:
            tracker.complete(task_id, outcome_of_error(exc))
            raise
    tracker.complete(task_id, JobOutcome(COMPLETED, result=result_reference(body)))
    return body


def queue_order(scheduler: Any, store: Any = None) -> list[str]:
    """Every waiting job's task id, next first: the scheduler's queue (priority order), then the
    async tasks still waiting in the store for the task runner to hand them over."""
    queued = scheduler.queued_task_ids()
    if store is None:
        return queued
    seen = set(queued)
    return queued + [task.id for task in store.pending(limit=PENDING_TASKS_LISTED) if task.id not in seen]


# who sees which job ------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    """The caller reading progress, with the async tasks' ownership rule (`Caller.owns`): a
    caller that may not see all tasks (a Basic-auth user, a non-admin key) finds another
    caller's job looking like an unknown id, since its previews are their images. Without
    authentication every job is visible, as in A1111."""

    identity: str | None = None  # "key:alice", "user:bob"
    sees_all: bool = True

    @classmethod
    def of(cls, caller: Any) -> Viewer:
        """From an authenticated `Caller` (webui_api.serving.keys)."""
        return cls(caller.identity, bool(caller.sees_all_tasks))

    def sees(self, owner: str | None) -> bool:
        return self.sees_all or owner is None or owner == self.identity


def observe(tracker: ProgressTracker, task_id: str, pending: list[str], viewer: Viewer) -> tuple[JobView, list[str]]:
    """The job and the queue as `viewer` may see them: another caller's job reads as unknown."""
    if viewer.sees(tracker.owner(task_id)):
        return tracker.view(task_id), pending
    return JobView(task_id, active=False, completed=False), [other for other in pending if other != task_id]


def visible_pending(tracker: ProgressTracker, pending: list[str], viewer: Viewer) -> list[str]:
    """/internal/pending-tasks lists the viewer's own waiting jobs (all of them without authentication)."""
    return [task_id for task_id in pending if viewer.sees(tracker.owner(task_id))]


# A1111's /internal/* ---------------------------------------------------------------------


def pending_tasks(pending: list[str]) -> dict[str, Any]:
    """GET /internal/pending-tasks."""
    return {"size": len(pending), "tasks": list(pending)}


def internal_progress(
    view: JobView, pending: list[str], id_live_preview: int = -1, live_preview: bool = True,
    previews_enabled: bool = True,
) -> dict[str, Any]:
    """POST /internal/progress. `pending` is the queue in order (the next job first)."""
    queued = view.task_id in pending
    if not view.active:
        return {
            "active": False, "queued": queued, "completed": view.completed, "progress": None, "eta": None,
            "live_preview": None, "id_live_preview": -1, "textinfo": queue_textinfo(view.task_id, pending),
        }
    image, image_id = None, id_live_preview
    if previews_enabled and live_preview and view.preview is not None and view.preview.id != id_live_preview:
        image, image_id = view.preview.data_uri, view.preview.id
    return {
        "active": True, "queued": queued, "completed": view.completed, "progress": view.fraction, "eta": view.eta,
        "live_preview": image, "id_live_preview": image_id, "textinfo": view.textinfo,
    }


def queue_textinfo(task_id: str, pending: list[str]) -> str:
    """A1111's text for a job that is not running: its place in the queue, or "Waiting..."."""
    if task_id not in pending:
        return "Waiting..."
    return f"In queue: {pending.index(task_id) + 1}/{len(pending)}"


# per-job event streams -----------------------------------------------------------------


def job_status(view: JobView, pending: list[str]) -> dict[str, Any]:
    """The `status` event: where the job is (waiting: not known yet, queued, active, completed)."""
    if view.active:
        state = ACTIVE_STATE
    elif view.task_id in pending:
        state = "queued"
    elif view.completed or view.outcome is not None:
        state = COMPLETED
    else:
        state = "waiting"
    position = pending.index(view.task_id) + 1 if state == "queued" else None
    return {"task_id": view.task_id, "state": state, "position": position, "queue_size": len(pending),
            "textinfo": view.textinfo if view.active else queue_textinfo(view.task_id, pending)}


def job_progress(view: JobView, last_preview_id: int, previews: bool) -> dict[str, Any]:
    """The `progress` event: steps of the current sampler run, batches, A1111's fraction and
    eta, and the preview when a new one exists since the last event sent."""
    preview = view.preview if previews and view.preview is not None and view.preview.id > last_preview_id else None
    return {
        "task_id": view.task_id,
        "step": view.sampling_step + 1 if view.sampling_steps else 0,
        "total": view.sampling_steps,
        "job_no": view.job_no,
        "job_count": view.job_count,
        "progress": view.fraction,
        "eta": view.eta,
        "id_live_preview": preview.id if preview else last_preview_id,
        "live_preview": preview.data_uri if preview else None,
    }


def job_done(task_id: str, outcome: JobOutcome) -> dict[str, Any]:
    return {"task_id": task_id, "status": outcome.status, "error": outcome.error, "result": outcome.result}


async def job_events(
    tracker: ProgressTracker,
    task_id: str,
    pending: Callable[[], list[str]],
    *,
    previews: bool = True,
    wait_seconds: float = 300.0,
    clock: Callable[[], float] = time.monotonic,
    viewer: Viewer | None = None,
) -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
    """The events of one job, in order: `status` on every change of state or queue position,
    `progress` on every new step or batch (coalesced if the reader is slower than the sampler),
    then `done` with the outcome; the sequence ends after `done`. A job that is still unknown
    after `wait_seconds` (never submitted, or forgotten long ago) ends with status "unknown".
    `None` items mark idle stretches of KEEPALIVE_SECONDS (SSE sends a comment line)."""
    viewer = viewer or Viewer()
    waker = tracker.subscribe()
    try:
        last_status: dict[str, Any] | None = None
        last_progress: tuple[Any, ...] | None = None
        last_preview_id, started, quiet_since = 0, clock(), clock()
        while True:
            view, queue = observe(tracker, task_id, pending(), viewer)
            sent = False
            status = job_status(view, queue)
            if status != last_status:
                last_status, sent = status, True
                yield "status", status
            if view.active:
                progress = job_progress(view, last_preview_id, previews)
                key = (progress["step"], progress["total"], progress["job_no"], progress["job_count"],
                       progress["id_live_preview"])
                if key != last_progress:
                    last_progress, last_preview_id, sent = key, progress["id_live_preview"], True
                    yield "progress", progress
            if view.outcome is not None:
                yield "done", job_done(task_id, view.outcome)
                return
            if status["state"] == "waiting" and clock() - started > wait_seconds:
                yield "done", job_done(task_id, JobOutcome("unknown", error="no job with this task id was seen"))
                return
            if sent:
                quiet_since = clock()
            elif clock() - quiet_since > KEEPALIVE_SECONDS:
                quiet_since = clock()
                yield None
            await waker.wait(STREAM_POLL_SECONDS)
    finally:
        tracker.unsubscribe(waker)


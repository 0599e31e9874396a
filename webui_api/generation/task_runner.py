"""The async task runner behind agent-scheduler's routes, and the result formats it shares
with them.

The `TaskRunner` feeds persisted tasks to the scheduler one at a time, through the same
`run_txt2img` / `run_img2img` as the synchronous routes, so a task's images equal a
synchronous request's. It also applies the retention policy: finished tasks older than
--task-retention-hours are deleted with their result files, at start and then hourly, and the
disk caps (--task-max-count, --task-max-mb) after every task. A callback goes out only under
the URL policy of the task's owner (task_callback.callback_policy).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from typing import Any

from ..errors import ApiError
from ..pixel_budget import pixel_budget
from ..progress import COMPLETED, JobOutcome
from ..runtime import Runtime
from ..schemas.generation import Img2ImgRequest, Txt2ImgRequest
from ..serving.context import RequestContext
from ..task_callback import CallbackFile, callback_policy, post_callback
from ..task_progress import task_scope
from ..tasks import DONE, FAILED, FINISHED, TaskRecord, TaskStore
from ..workers import WorkerLost
from .runs import run_img2img, run_txt2img

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0  # the runner also wakes at once when a task is queued
RETENTION_CHECK_SECONDS = 3600.0
RESULTS_PREFIX = "/agent-scheduler/v1"  # where a finished task's results are read (routes/tasks.py)


REQUEUE_PAUSE_SECONDS = 2.0
RECOVER_SECONDS = 30.0  # how often a runner on a shared store looks for tasks of a dead runner
RENEW_SECONDS = 15.0  # lease renewal of a running task (the Redis store's lease is 60 s)


class TaskRunner:
    """Runs pending tasks in order on the event loop; the device work itself is the scheduler's."""

    def __init__(self, store: TaskStore, runtime: Runtime) -> None:
        self.store = store
        self._runtime = runtime
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._current: tuple[str, asyncio.Task] | None = None  # (task id, its generation)
        self._stopping = False
        self._next_purge = 0.0  # monotonic time of the next retention pass
        self._next_recover = 0.0  # monotonic time of the next look for orphaned tasks (shared stores)

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def current_task_id(self) -> str | None:
        return self._current[0] if self._current else None

    def start(self) -> None:
        """Recover what a crash left, purge expired results, then run the line."""
        report = self.store.recover()
        if report.requeued or report.failed:
            log.warning("async tasks after restart: %d re-queued, %d failed (died twice)",
                        report.requeued, report.failed)
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
        hours = self._runtime.settings.task_retention_hours
        if not hours:
            return 0
        purged = self.store.purge_finished(hours * 3600.0)
        if purged:
            log.info("async tasks: %d finished tasks older than %g h purged with their results", purged, hours)
        return purged

    def enforce_caps(self) -> int:
        """--task-max-count / --task-max-mb: the oldest finished tasks go first."""
        settings = self._runtime.settings
        removed = self.store.enforce_caps(settings.task_max_count, int(settings.task_max_mb * 1024 * 1024))
        if removed:
            log.info("async tasks: %d oldest finished tasks deleted to stay within the disk caps", removed)
        return removed

    def has_room(self) -> bool:
        """Whether the pending tasks leave room for one more under the caps (else the queue route answers 503)."""
        settings = self._runtime.settings
        return self.store.room_for_more(settings.task_max_count, int(settings.task_max_mb * 1024 * 1024))

    async def _purge_when_due(self) -> None:
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + RETENTION_CHECK_SECONDS
            await asyncio.to_thread(self.purge_expired)
            await asyncio.to_thread(self.enforce_caps)

    async def _run_forever(self) -> None:
        while True:
            await self._purge_when_due()
            await self._recover_orphans_when_due()
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

    async def _recover_orphans_when_due(self) -> None:
        """A shared store (several ingresses): tasks whose runner died are re-queued by whoever
        looks next, not only at a restart. A local store recovers at start-up only."""
        if getattr(self.store, "leases", False) and time.monotonic() >= self._next_recover:
            self._next_recover = time.monotonic() + RECOVER_SECONDS
            report = await asyncio.to_thread(self.store.recover)
            if report.requeued or report.failed:
                log.warning("async tasks of a lost runner: %d re-queued, %d failed", report.requeued, report.failed)

    async def _renew_lease(self, task_id: str) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            await asyncio.to_thread(self.store.renew, task_id)

    async def _run_one(self, task: TaskRecord) -> None:
        if not await asyncio.to_thread(self.store.claim, task.id):
            return  # another runner (another ingress) took it first
        generation = asyncio.create_task(self._generate(task))
        self._current = (task.id, generation)
        lease = asyncio.create_task(self._renew_lease(task.id))
        result: dict[str, Any] | None = None
        try:
            result = await generation
            await asyncio.to_thread(self.store.finish, task.id, result)
            await asyncio.to_thread(self.enforce_caps)
        except asyncio.CancelledError:
            self._after_cancel(task.id, generation)
        except WorkerLost as lost:  # two replicas died under it (--ray): back in line, never lost
            log.warning("async task %s: %s; re-queued", task.id, lost.detail)
            await asyncio.to_thread(self.store.return_to_queue, task.id)
            await asyncio.sleep(REQUEUE_PAUSE_SECONDS)  # let Serve replace the replicas first
        except ApiError as exc:  # the request itself was bad, or the engine refused it
            await self._record_failure(task, f"{type(exc).__name__}: {exc.detail}", type(exc).__name__, exc.status_code)
        except Exception as exc:  # an engine bug: recorded on the task (and logged), the runner goes on
            log.exception("async task %s failed", task.id)
            await self._record_failure(task, f"{type(exc).__name__}: {exc}", type(exc).__name__, 500)
        finally:
            lease.cancel()
            self._current = None
        self._report_outcome(task.id, result)
        self._notify(task, result)

    def _report_outcome(self, task_id: str, result: dict[str, Any] | None) -> None:
        """End the task's progress streams (/sdapi/v1/progress/{id}/events) with its outcome."""
        finished = self.store.get(task_id)
        if finished is None or finished.status not in FINISHED:
            return
        reference = None
        if result is not None:
            reference = {"images": len(result.get("images") or []), "href": f"{RESULTS_PREFIX}/task/{task_id}/results"}
        status = COMPLETED if finished.status == DONE else finished.status  # failed and interrupted read the same
        self._runtime.progress.complete(task_id, JobOutcome(status, error=finished.error, result=reference))

    async def _record_failure(self, task: TaskRecord, error: str, error_type: str, status: int) -> None:
        """A failed task: its status and error in the store, the metrics' error count, the audit log."""
        self.store.fail(task.id, error)
        self._runtime.metrics.count_error(error_type, status)
        context = RequestContext(caller=task.owner_name, priority=task.tier, task_id=task.id, owner=task.owner)
        await self._runtime.serving.audit_failure(task.type, task.params, context, error)

    def _notify(self, task: TaskRecord, result: dict[str, Any] | None) -> None:
        """Fire the callback in a thread of its own: its retries must not hold up the next task."""
        finished = self.store.get(task.id)
        if not task.callback_url or finished is None or finished.status not in (DONE, FAILED):
            return
        policy = callback_policy(self._runtime.settings.callback_allow, task.owner)
        if policy is None:
            log.warning("callback for task %s skipped: callbacks are not allowed for its owner", task.id)
            return
        files = callback_files(task.id, result_entries(result)) if result else []
        thread = threading.Thread(
            target=post_callback, args=(task.callback_url, task.id, finished.status, files, policy),
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
        context = RequestContext(caller=task.owner_name, priority=task.tier, task_id=task.id, owner=task.owner)
        if task.owner:
            self._runtime.progress.claim(task.id, task.owner)  # callers who may not see all tasks see only theirs
        # the queued job carries the task's id (/internal/progress, event streams); the task's
        # images are decoded and sized under the server's pixel budget, as in a request
        with task_scope(task.id), pixel_budget(self._runtime.serving.limits.max_input_pixels):
            if task.type == "txt2img":
                return await run_txt2img(Txt2ImgRequest.model_validate(task.params), self._runtime, guarded=False,
                                         context=context)
            return await run_img2img(Img2ImgRequest.model_validate(task.params), self._runtime, guarded=False,
                                     context=context)


def _report_crash(loop_task: asyncio.Task) -> None:
    """The runner only ends by cancellation; anything else is a bug that must not pass silently."""
    if not loop_task.cancelled() and loop_task.exception() is not None:
        log.error("the async task runner stopped: %r; queued tasks wait for a restart", loop_task.exception())


# result formats ---------------------------------------------------------------------------------

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
    files = []
    for index, entry in enumerate(entries):
        header, _, b64 = entry["image"].partition(",")
        mime = header[len("data:"):].split(";")[0]
        files.append(CallbackFile(f"{task_id}-{index}.{_extension(mime)}", base64.b64decode(b64), mime))
    return files


def _extension(mime: str) -> str:
    return mime.split("/")[1].replace("jpeg", "jpg")

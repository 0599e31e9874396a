"""The job queue: one worker thread owns the device; HTTP handlers await futures.

Every piece of work that touches the engine (generation, checkpoint loads, unloads) goes
through `Scheduler.submit`, so the model is never used from two threads. Routes stay
`async` and hold neither a lock nor a thread while they wait. Lower `priority` runs first;
equal priorities run in submission order.

Guards for shared servers: a bounded queue (`QueueFull`, 503 with Retry-After, instead of an
ever-growing backlog), a maximum wait in the queue (`QueueTimeout`: the job is cancelled and
never runs late), and cancellation of a queued job whose client went away (`ClientGone`).
Only items submitted with `guarded=True` (HTTP generation) count towards the depth; model
loads and other internal work are never refused.

Workers: the queue is drained by one lane thread per `Worker` (webui_api.workers). The default
is one `LocalWorker` (one thread that owns the device); with `--ray` each lane hands its items to
a Ray Serve replica. A lane whose worker is lost mid-job (`WorkerLost`) runs the item once more,
on whichever replica is alive, before answering 503 with Retry-After.

Cross-request batching: an item with a `BatchSlot` may run together with queued items of the
same key (webui_api.batching). The worker takes the highest-priority item as always, then the
compatible items queued behind it in queue order (up to `max_size` images, waiting at most
`wait_ms` for more to arrive), and runs them with one `run_group` call. If that call fails,
each item is retried alone, so one bad job cannot fail the others.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import heapq
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from .batching import BatchingConfig
from .errors import ApiError, ServiceUnavailable
from .progress import CancelToken, ProgressTracker
from .task_progress import current_task_id
from .workers import AnyCancel, LocalWorker, RemoteCall, Worker, WorkerLost

log = logging.getLogger(__name__)

PRIORITY_NORMAL = 10
PRIORITY_HIGH = 0
DEFAULT_MAX_QUEUE_DEPTH = 64
DEFAULT_QUEUE_TIMEOUT = 600.0  # seconds a generation may wait in the queue before it is refused
POLL_INTERVAL = 0.25  # how often an awaiting request checks its deadline and its client


class QueueFull(ServiceUnavailable):
    """The queue holds `max_queue_depth` jobs already: come back later (503 + Retry-After)."""

    def __init__(self, depth: int, retry_after: int) -> None:
        super().__init__(
            f"The generation queue is full ({depth} jobs waiting, the limit is --max-queue-depth {depth}); "
            f"retry in about {retry_after} s"
        )
        self.headers = {"Retry-After": str(retry_after)}


class QueueTimeout(ServiceUnavailable):
    """A job waited longer than --queue-timeout; it was cancelled before it ran (503)."""

    def __init__(self, waited: float, limit: float) -> None:
        super().__init__(
            f"The job waited {waited:.1f} s in the queue, longer than the limit of {limit:g} s "
            "(--queue-timeout); it was cancelled and did not run"
        )
        self.headers = {"Retry-After": "1"}


class ClientGone(ApiError):
    """The synchronous client disconnected while its job was still queued; nobody reads the answer.

    499 is nginx's "client closed request": it only shows up in access logs."""

    status_code = 499

    def __init__(self, label: str) -> None:
        super().__init__(f"The client disconnected while its {label} job was queued; the job was dropped")


@dataclass(frozen=True)
class ProgressSpec:
    """How a generation item shows up in /progress while it runs."""

    job: str  # A1111's state.job, e.g. "scripts_txt2img"
    job_count: int
    job_timestamp: str
    preview_every_n_steps: int


@dataclass(frozen=True)
class BatchSlot:
    """How an item may join a batch: items with equal `key` may run through one `run_group`
    call, which receives the items (head first) and returns one result per item, in order."""

    key: Hashable
    size: int  # images the item adds to the batch
    run_group: Callable[[Sequence[WorkItem]], list[Any]]
    payload: Any = None  # what run_group reads from the item (the GenerationJob)


@dataclass
class WorkItem:
    """One unit of device work: `run(cancel)` executes on the worker thread."""

    run: Callable[[CancelToken], Any]
    label: str
    progress: ProgressSpec | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    batch: BatchSlot | None = None  # set when the item may share a UNet batch
    task_id: str | None = None  # A1111's id_task of a generation (the request's, when queued inside task_scope)
    remote: Any = None  # a webui_api.workers.RemoteCall when another process may run it (--ray)
    # wrappers around the execution on whichever worker runs it (timings): each gets a no-argument
    # callable that runs the item (retry included) and returns its result
    around: tuple[Callable[[Callable[[], Any]], Any], ...] = ()


@dataclass(order=True)
class _Entry:
    priority: int
    seq: int
    item: WorkItem | None = field(compare=False)  # None is the stop sentinel


class _Queue:
    """A priority heap the worker can also search (for batch partners) under one condition."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self.changed = threading.Condition()

    def put(self, entry: _Entry) -> None:
        with self.changed:
            heapq.heappush(self._heap, entry)
            self.changed.notify_all()

    def get(self) -> _Entry:
        """The first entry, waiting for one."""
        with self.changed:
            while not self._heap:
                self.changed.wait()
            return heapq.heappop(self._heap)

    def take(self, wanted: Callable[[WorkItem], bool]) -> list[WorkItem]:
        """Remove and return the queued items `wanted` accepts, asked in queue order (it may
        keep count). Call with `changed` held."""
        chosen = [e for e in sorted(self._heap) if e.item is not None and wanted(e.item)]
        if chosen:
            ids = {id(e) for e in chosen}
            self._heap = [e for e in self._heap if id(e) not in ids]
            heapq.heapify(self._heap)
        return [e.item for e in chosen if e.item is not None]

    def task_ids(self) -> list[str]:
        """The task ids of the queued items still waiting, next to run first."""
        with self.changed:
            entries = sorted(self._heap)
        return [e.item.task_id for e in entries if e.item is not None and e.item.task_id and not e.item.future.done()]

    def qsize(self) -> int:
        with self.changed:
            return len(self._heap)

    def drain(self) -> list[_Entry]:
        with self.changed:
            entries, self._heap = sorted(self._heap), []
            return entries


class Scheduler:
    """A priority queue drained by a single worker thread."""

    def __init__(
        self,
        progress: ProgressTracker,
        after_failure: Callable[[], None] | None = None,
        *,
        max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
        batching: BatchingConfig = BatchingConfig(max_size=1),
        on_batch: Callable[[int], None] | None = None,
        client_error_for: Callable[[BaseException], BaseException] | None = None,
        admission_check: Callable[[], None] | None = None,
        workers: Sequence[Worker] | None = None,
        lane_scope: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        if max_queue_depth < 1 or queue_timeout < 0:
            raise ValueError(
                f"max_queue_depth must be >= 1 and queue_timeout >= 0 (0: no limit); "
                f"got {max_queue_depth} and {queue_timeout}"
            )
        self._progress = progress
        self._after_failure = after_failure
        self._client_error_for = client_error_for  # e.g. a device OOM -> 503 (engine.device_errors)
        self._admission_check = admission_check  # raises to refuse guarded work (a hot GPU: gpu_health)
        self.max_queue_depth = max_queue_depth
        self.queue_timeout = queue_timeout
        self._guarded: set[int] = set()  # ids of guarded items still waiting (not running, not cancelled)
        self._guarded_lock = threading.Lock()
        self.batching = batching
        self.on_batch = on_batch  # metrics hook (public): called with the job count of every batch run
        self._queue = _Queue()
        self._seq = itertools.count()
        self.workers: tuple[Worker, ...] = tuple(workers) if workers else (LocalWorker(),)
        self._current: dict[int, tuple[WorkItem, ...]] = {}  # lane -> the items it runs now
        self._current_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accepting = False
        # entered by every lane thread for its whole life: a new thread starts with a fresh
        # context, so what a request scope sets (the server's image pixel budget) is set here again
        self._lane_scope = lane_scope

    # lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True
        for lane, worker in enumerate(self.workers):
            name = "webui-api-worker" if len(self.workers) == 1 else f"webui-api-worker-{lane}"
            thread = threading.Thread(target=self._work_loop, args=(lane, worker), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, interrupt the running items, and let the lanes drain."""
        self._accepting = False
        self.interrupt()
        for _ in self._threads:
            self._queue.put(_Entry(priority=10**9, seq=next(self._seq), item=None))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._fail_leftovers()
        for worker in self.workers:
            worker.close()

    # submission ------------------------------------------------------------------------

    def submit(
        self, item: WorkItem, priority: int = PRIORITY_NORMAL, *, guarded: bool = False
    ) -> concurrent.futures.Future:
        """Queue `item`; with `guarded`, refuse it (QueueFull) when the queue is at its depth limit."""
        if not self._accepting:
            raise ServiceUnavailable("The server is shutting down and accepts no new work")
        if guarded:
            self._admit(item)
        if item.progress is not None and item.task_id is None:
            item.task_id = current_task_id.get()
        self._queue.put(_Entry(priority=priority, seq=next(self._seq), item=item))
        if item.task_id is not None:
            self._progress.queue_changed()
            item.future.add_done_callback(lambda _: self._progress.queue_changed())
        return item.future

    def _admit(self, item: WorkItem) -> None:
        if self._admission_check is not None:
            self._admission_check()
        with self._guarded_lock:
            if len(self._guarded) >= self.max_queue_depth:
                raise QueueFull(self.max_queue_depth, self._retry_after())
            self._guarded.add(id(item))
        item.future.add_done_callback(lambda _: self._release(item))

    def _release(self, item: WorkItem) -> None:
        with self._guarded_lock:
            self._guarded.discard(id(item))

    def _retry_after(self) -> int:
        """A rough hint: a few seconds per job ahead, at least one."""
        return max(1, min(120, len(self._guarded) * 2))

    async def run(
        self,
        item: WorkItem,
        priority: int = PRIORITY_NORMAL,
        *,
        guarded: bool = False,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> Any:
        """Submit and await the result without blocking the event loop.

        While the item is still queued, this polls its wait time (a guarded item gets
        QueueTimeout after `queue_timeout`) and, if given, `disconnected()` (ClientGone); in both
        cases the item is cancelled so the worker skips it. Once the item runs, it runs to the end.
        """
        future = self.submit(item, priority, guarded=guarded)
        waiting = asyncio.wrap_future(future)
        started = asyncio.get_running_loop().time()
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=POLL_INTERVAL)
                if done:
                    return waiting.result()
                await self._check_still_wanted(item, started, guarded, disconnected)
        except asyncio.CancelledError:  # nobody awaits the job any more: drop it if queued, else stop it
            if not item.future.cancel():
                item.cancel.interrupt()
            raise

    async def _check_still_wanted(
        self, item: WorkItem, started: float, guarded: bool, disconnected: Callable[[], Awaitable[bool]] | None
    ) -> None:
        """Cancel a still-queued item whose deadline passed (guarded items only) or whose client
        left; a running item is never cancelled here."""
        waited = asyncio.get_running_loop().time() - started
        if guarded and self.queue_timeout and waited > self.queue_timeout and item.future.cancel():
            log.warning(
                "%s waited %.1f s in the queue; cancelled (queue timeout %g s)", item.label, waited, self.queue_timeout
            )
            raise QueueTimeout(waited, self.queue_timeout)
        if disconnected is not None and await disconnected() and item.future.cancel():
            log.info("%s: the client disconnected while the job was queued; dropped", item.label)
            raise ClientGone(item.label)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def queued_task_ids(self) -> list[str]:
        """Task ids of the generations waiting in the queue, in the order they will run
        (A1111's pending_tasks, which /internal/pending-tasks lists)."""
        return self._queue.task_ids()

    @property
    def worker_alive(self) -> bool:
        """Every lane thread runs (what /ready reports as worker_alive)."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    @property
    def waiting_generations(self) -> int:
        """Guarded items queued and not yet started (what max_queue_depth limits)."""
        with self._guarded_lock:
            return len(self._guarded)

    # control of the running item ------------------------------------------------------

    def interrupt(self) -> None:
        """Interrupt the running work on every lane; a running batch is one job, as A1111's state has it.
        A remote worker forwards the flag to the replica running the item."""
        for item in self.running_items():
            item.cancel.interrupt()

    def skip(self) -> None:
        for item in self.running_items():
            item.cancel.skip()

    def running_items(self) -> list[WorkItem]:
        with self._current_lock:
            return [item for items in self._current.values() for item in items]

    # worker ----------------------------------------------------------------------------

    def _work_loop(self, lane: int, worker: Worker) -> None:
        with self._lane_scope():
            self._drain(lane, worker)

    def _drain(self, lane: int, worker: Worker) -> None:
        while True:
            entry = self._queue.get()
            if entry.item is None:
                return
            group = self._gather(entry.item)
            if len(group) == 1:
                self._execute(entry.item, lane, worker)
            else:
                self._execute_batch(group, lane, worker)

    def _gather(self, head: WorkItem) -> list[WorkItem]:
        """The head item plus queued items with its batch key, in queue order, up to the
        batch size in images; waits up to the batching window for partners to arrive."""
        slot = head.batch
        if slot is None or not self.batching.enabled or head.future.cancelled():
            return [head]
        group, room = [head], [self.batching.max_size - slot.size]

        def wanted(item: WorkItem) -> bool:
            if not _fits(item, slot.key, room[0]):
                return False
            room[0] -= item.batch.size  # type: ignore[union-attr]
            return True

        deadline = time.monotonic() + self.batching.wait_seconds
        with self._queue.changed:
            while room[0] > 0:
                group += self._queue.take(wanted)
                left = deadline - time.monotonic()
                if room[0] <= 0 or left <= 0:
                    break
                self._queue.changed.wait(left)
        return group

    def _start(self, item: WorkItem) -> bool:
        """Mark a queued item running; False when it was cancelled while queued."""
        if not item.future.set_running_or_notify_cancel():
            return False
        self._release(item)
        return True

    def _execute(self, item: WorkItem, lane: int, worker: Worker) -> None:
        if not self._start(item):
            return
        self._run_started(item, lane, worker)

    def _run_started(self, item: WorkItem, lane: int, worker: Worker) -> None:
        self._set_current(lane, (item,))
        self._begin_progress(item, (item,))
        try:
            item.future.set_result(self._execute_with_retry(item, worker))
        except BaseException as exc:  # handed to the awaiting request; the worker lives on
            self._fail(item, exc)
            del exc
        finally:
            self._end_progress(item, lane)

    def _execute_with_retry(self, item: WorkItem, worker: Worker) -> Any:
        """The item on `worker`, inside the item's `around` wrappers (outermost first)."""
        def execute() -> Any:
            return self._retry_once(item, worker)

        call: Callable[[], Any] = execute
        for wrapper in reversed(item.around):
            call = functools.partial(wrapper, call)
        return call()

    def _retry_once(self, item: WorkItem, worker: Worker) -> Any:
        """A lost worker (a dead replica) gets the item once more: the worker routes the second
        try to a live replica. A second loss goes to the caller (503 with Retry-After)."""
        try:
            return worker.execute(item, self._progress)
        except WorkerLost as lost:
            if item.cancel.interrupted:
                raise
            log.warning("%s: %s; running it once more on another replica", item.label, lost)
        return worker.execute(item, self._progress)

    def _execute_batch(self, items: list[WorkItem], lane: int, worker: Worker) -> None:
        """Run items together through the head's `run_group`; on failure, each alone."""
        started = [item for item in items if self._start(item)]
        if len(started) <= 1:
            for item in started:
                self._run_started(item, lane, worker)
            return
        if self.on_batch is not None:
            self.on_batch(len(started))
        self._set_current(lane, tuple(started))
        self._begin_progress(started[0], tuple(started))
        try:
            results = _run_group(started, worker, self._progress)
        except BaseException as exc:
            log.error(
                "batch of %d failed; retrying each alone:\n%s", len(started), "".join(traceback.format_exception(exc))
            )
            del exc
            self._recover()
            results = None
        finally:
            self._end_progress(started[0], lane)
        if results is not None and len(results) != len(started):
            log.error("batch of %d returned %d results; retrying each alone", len(started), len(results))
            results = None
        if results is None:
            for item in started:
                self._run_started(item, lane, worker)
            return
        for item, result in zip(started, results, strict=True):
            item.future.set_result(result)

    def _set_current(self, lane: int, items: tuple[WorkItem, ...]) -> None:
        with self._current_lock:
            self._current[lane] = items

    def _begin_progress(self, item: WorkItem, running: tuple[WorkItem, ...]) -> None:
        """`item`'s progress spec shows in /progress; every running item's task id is active."""
        if item.progress is not None:
            spec = item.progress
            task_ids = tuple(i.task_id for i in running if i.task_id)
            self._progress.begin(spec.job, spec.job_count, spec.job_timestamp, item.cancel, spec.preview_every_n_steps,
                                 task_ids=task_ids)

    def _end_progress(self, item: WorkItem, lane: int) -> None:
        if item.progress is not None:
            self._progress.end()
        self._set_current(lane, ())

    def _fail(self, item: WorkItem, exc: BaseException) -> None:
        log.error("work item %r failed:\n%s", item.label, "".join(traceback.format_exception(exc)))
        told = self._client_error_for(exc) if self._client_error_for is not None else exc
        _without_tracebacks(exc)
        _without_tracebacks(told)
        del exc
        self._recover()  # the failed job's memory is back before its client hears (and retries)
        item.future.set_exception(told)

    def _recover(self) -> None:
        """Free what a failed item left behind (device memory) so the next one can run."""
        if self._after_failure is not None:
            self._after_failure()

    def _fail_leftovers(self) -> None:
        for entry in self._queue.drain():
            if entry.item is not None and entry.item.future.set_running_or_notify_cancel():
                entry.item.future.set_exception(ServiceUnavailable("The server stopped before this job ran"))


def _run_group(items: list[WorkItem], worker: Worker, progress: ProgressTracker) -> list[Any]:
    """A gathered batch on the lane's worker: locally through the head's `run_group`; remotely
    as one item whose RemoteCall holds every job (the head's call made a batch call)."""
    head = items[0]
    if isinstance(worker, LocalWorker) or head.remote is None:
        return head.batch.run_group(items)  # type: ignore[union-attr]
    return worker.execute(batch_item(items), progress)


def batch_item(items: Sequence[WorkItem]) -> WorkItem:
    """Gathered batch partners as ONE remote item: a "txt2img_batch" call over every job, in
    queue order, returning one result per job; an interrupt of any member reaches the batch."""
    calls = [item.remote for item in items]
    if any(not isinstance(call, RemoteCall) or call.kind not in ("txt2img", "txt2img_batch") for call in calls):
        raise ValueError("only remote txt2img items can be batched into one remote call")
    head = calls[0]
    jobs = tuple(job for call in calls for job in call.jobs)
    remote = RemoteCall("txt2img_batch", jobs, unet_rows=head.unet_rows, checkpoint=head.checkpoint)

    def run(cancel: CancelToken) -> Any:
        raise RuntimeError("a batch item only runs remotely")

    return WorkItem(run=run, label=items[0].label, progress=items[0].progress,
                    cancel=AnyCancel([item.cancel for item in items]), remote=remote)


def _fits(item: WorkItem, key: Hashable, room: int) -> bool:
    """Whether a queued item can join a batch with `key` that has `room` images left."""
    slot = item.batch
    return slot is not None and slot.key == key and slot.size <= room and not item.future.cancelled()


def _without_tracebacks(exc: BaseException) -> BaseException:
    """Drop the frames an exception keeps alive (and with them the failed job's tensors).

    The traceback is already in the log; the awaiting request only needs type and message.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return exc

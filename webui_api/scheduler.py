"""The job queue: one worker thread owns the device; HTTP handlers await futures.

Every piece of work that touches the engine (generation, checkpoint loads, unloads) goes
through `Scheduler.submit`, so the model is never used from two threads. Routes stay
`async` and hold neither a lock nor a thread while they wait. Lower `priority` runs first;
equal priorities run in submission order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .errors import ServiceUnavailable
from .progress import CancelToken, ProgressTracker

log = logging.getLogger(__name__)

PRIORITY_NORMAL = 10
PRIORITY_HIGH = 0


@dataclass(frozen=True)
class ProgressSpec:
    """How a generation item shows up in /progress while it runs."""

    job: str  # A1111's state.job, e.g. "scripts_txt2img"
    job_count: int
    job_timestamp: str
    preview_every_n_steps: int


@dataclass
class WorkItem:
    """One unit of device work: `run(cancel)` executes on the worker thread."""

    run: Callable[[CancelToken], Any]
    label: str
    progress: Optional[ProgressSpec] = None
    cancel: CancelToken = field(default_factory=CancelToken)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass(order=True)
class _Entry:
    priority: int
    seq: int
    item: Optional[WorkItem] = field(compare=False)  # None is the stop sentinel


class Scheduler:
    """A priority queue drained by a single worker thread."""

    def __init__(self, progress: ProgressTracker, after_failure: Callable[[], None] | None = None) -> None:
        self._progress = progress
        self._after_failure = after_failure
        self._queue: queue.PriorityQueue[_Entry] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._current: Optional[WorkItem] = None
        self._current_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._accepting = False

    # lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True
        self._thread = threading.Thread(target=self._work_loop, name="webui-api-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, interrupt the running item, and let the worker drain."""
        self._accepting = False
        self.interrupt()
        self._queue.put(_Entry(priority=10**9, seq=next(self._seq), item=None))
        if self._thread is not None:
            self._thread.join(timeout)

    # submission ------------------------------------------------------------------------

    def submit(self, item: WorkItem, priority: int = PRIORITY_NORMAL) -> concurrent.futures.Future:
        if not self._accepting:
            raise ServiceUnavailable("The server is shutting down and accepts no new work")
        self._queue.put(_Entry(priority=priority, seq=next(self._seq), item=item))
        return item.future

    async def run(self, item: WorkItem, priority: int = PRIORITY_NORMAL) -> Any:
        """Submit and await the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(item, priority))

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # control of the running item ------------------------------------------------------

    def interrupt(self) -> None:
        with self._current_lock:
            if self._current is not None:
                self._current.cancel.interrupt()

    def skip(self) -> None:
        with self._current_lock:
            if self._current is not None:
                self._current.cancel.skip()

    # worker ----------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            entry = self._queue.get()
            if entry.item is None:
                self._fail_leftovers()
                return
            self._execute(entry.item)

    def _execute(self, item: WorkItem) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        with self._current_lock:
            self._current = item
        if item.progress is not None:
            spec = item.progress
            self._progress.begin(spec.job, spec.job_count, spec.job_timestamp, item.cancel, spec.preview_every_n_steps)
        try:
            item.future.set_result(item.run(item.cancel))
        except BaseException as exc:  # handed to the awaiting request; the worker lives on
            log.error("work item %r failed:\n%s", item.label, "".join(traceback.format_exception(exc)))
            item.future.set_exception(_without_tracebacks(exc))
            del exc
            self._recover()
        finally:
            if item.progress is not None:
                self._progress.end()
            with self._current_lock:
                self._current = None

    def _recover(self) -> None:
        """Free what a failed item left behind (device memory) so the next one can run."""
        if self._after_failure is not None:
            self._after_failure()

    def _fail_leftovers(self) -> None:
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry.item is not None and entry.item.future.set_running_or_notify_cancel():
                entry.item.future.set_exception(ServiceUnavailable("The server stopped before this job ran"))


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

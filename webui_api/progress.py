"""Progress and cancellation, passed explicitly to the engine (never module globals).

`CancelToken` carries the interrupt / skip flags a client sets through /sdapi/v1/interrupt
and /sdapi/v1/skip. `RunObserver` is the narrow interface the engine reports through; the
`ProgressTracker` (scheduler side) implements it.

The tracker keeps one `JobProgress` per job (A1111's `shared.state`, but per job), keyed by
the job's task id: the global /sdapi/v1/progress view reads the job on the device, while
/internal/progress and the per-job event streams read any job by its id, queued, running or
finished, so several clients with jobs in the queue each see their own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from webui_api.preview_thread import LatestOnlyThread

FINISHED_TASKS_KEPT = 16  # A1111's progress.finished_tasks length: /internal/progress "completed"
OUTCOMES_KEPT = 256  # finished jobs whose outcome (and last counters) a late stream can still read
ACTIVE, COMPLETED, FAILED, INTERRUPTED = "active", "completed", "failed", "interrupted"


class CancelToken:
    """Thread-safe interrupt/skip flags for one running job."""

    def __init__(self) -> None:
        self._interrupted = threading.Event()
        self._skipped = threading.Event()

    def interrupt(self) -> None:
        self._interrupted.set()

    def skip(self) -> None:
        self._skipped.set()

    def clear_skip(self) -> None:
        """Called at the start of each batch: a skip ends only the batch it hit."""
        self._skipped.clear()

    @property
    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    @property
    def skipped(self) -> bool:
        return self._skipped.is_set()

    @property
    def should_stop_sampling(self) -> bool:
        return self._interrupted.is_set() or self._skipped.is_set()


class RunObserver(Protocol):
    """What the engine calls while it runs a job (all calls on the worker thread)."""

    def batch_started(self, batch_no: int, batch_count: int) -> None: ...

    def sampling_step(
        self, step: int, total_steps: int, make_preview: Callable[[], Any]
    ) -> None:
        """`step` is 0-based. `make_preview()` returns a PIL image of the current x0
        estimate (cheap approximation); call it only when a preview is due."""

    def batch_finished(self, batch_no: int) -> None: ...


@dataclass(frozen=True)
class EncodedPreview:
    """A preview image encoded once, on the worker: base64 PNG for /sdapi/v1/progress and a
    data URI in `live_previews_image_format` for /internal/progress and the event streams."""

    png_base64: str
    data_uri: str


@dataclass(frozen=True)
class LivePreview:
    """The latest preview of a job; `id` is A1111's id_live_preview (1 for the first one)."""

    id: int
    png_base64: str
    data_uri: str


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, as the event streams report it in their `done` event."""

    status: str  # COMPLETED, FAILED or INTERRUPTED
    error: str | None = None
    result: dict[str, Any] | None = None  # where the result is: image URLs, a results route, a count


@dataclass
class JobProgress:
    """One job's counters (what A1111 keeps in `shared.state`); guarded by the tracker's lock."""

    job: str
    job_count: int
    job_timestamp: str
    time_start: float
    preview_every: int
    cancel: CancelToken | None = None
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    last_preview_step: int = -1
    previews_made: int = 0
    preview: LivePreview | None = None
    textinfo: str | None = None
    ended: bool = False

    @classmethod
    def idle(cls) -> JobProgress:
        return cls(job="", job_count=0, job_timestamp="0", time_start=0.0, preview_every=0, ended=True)

    def preview_due(self, step: int) -> bool:
        if self.preview_every <= 0:
            return False
        return self.last_preview_step < 0 or step - self.last_preview_step >= self.preview_every

    def fraction(self) -> float:
        """A1111's /internal/progress formula (no 0.01 head start, unlike /sdapi/v1/progress)."""
        if self.job_count <= 0:
            return 0.0
        done = self.job_no / self.job_count
        if self.sampling_steps > 0:
            done += self.sampling_step / self.sampling_steps / self.job_count
        return min(done, 1.0)

    def state_dict(self) -> dict[str, Any]:
        """/sdapi/v1/progress's `state`; an ended job reads as idle, keeping its step counters."""
        cancel = self.cancel
        return {
            "skipped": bool(cancel and cancel.skipped),
            "interrupted": bool(cancel and cancel.interrupted),
            "stopping_generation": False,
            "job": "" if self.ended else self.job,
            "job_count": 0 if self.ended else self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }


@dataclass(frozen=True)
class JobView:
    """What a reader sees of one task id at one moment (a copy: safe to read without a lock)."""

    task_id: str
    active: bool
    completed: bool  # finished on the device (A1111's finished_tasks), or answered without it
    job_no: int = 0
    job_count: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    fraction: float | None = None  # A1111's /internal/progress progress, while active
    eta: float | None = None
    preview: LivePreview | None = None
    textinfo: str | None = None
    outcome: JobOutcome | None = None


@dataclass(eq=False)
class _Waker:
    """A subscriber on an event loop: the tracker sets its event (thread-safely) on any change."""

    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> bool:
        """False when the subscriber's loop is gone (it is then dropped)."""
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # the loop was closed
            return False
        return True

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.event.clear()


class ProgressTracker:
    """Every job's progress, fed by the worker thread, read by HTTP handlers on other threads.

    The worker calls `begin` / `end` around a job (with the task ids it runs: several when
    cross-request batching runs jobs together) and forwards the engine's `RunObserver` calls.
    A1111 renders the preview when /progress is polled; we capture the latent every
    `preview_every_n_steps` steps on the worker and decode it on a preview thread (newest capture
    first, stale ones dropped), so neither a poll nor the sampling loop waits on a decode.
    """

    def __init__(
        self,
        encode_preview: Callable[[Any], EncodedPreview | None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock or time.time
        self._encode_preview = encode_preview
        self._current = JobProgress.idle()  # the job on the device, or the last one (ended)
        self._active: tuple[str, ...] = ()
        self._jobs: OrderedDict[str, JobProgress] = OrderedDict()
        self._finished: deque[str] = deque(maxlen=FINISHED_TASKS_KEPT)
        self._outcomes: OrderedDict[str, JobOutcome] = OrderedDict()
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._wakers: list[_Waker] = []
        self._preview_thread = LatestOnlyThread("live-preview")

    # the worker's side ---------------------------------------------------------------

    def begin(
        self, job: str, job_count: int, job_timestamp: str, cancel: CancelToken, preview_every_n_steps: int,
        task_ids: tuple[str, ...] = (),
    ) -> None:
        with self._lock:
            self._current = JobProgress(job, job_count, job_timestamp, self._clock(), preview_every_n_steps, cancel)
            self._active = task_ids
            for task_id in task_ids:
                _remember(self._jobs, task_id, self._current)
        self._wake_all()

    def end(self) -> None:
        """Back to idle; like A1111 the step counters keep their last values. The jobs that ran
        count as completed for /internal/progress from now on."""
        with self._lock:
            self._current.ended = True
            self._current.preview = None
            self._current.cancel = None
            self._finished.extend(self._active)
            self._active = ()
        self._wake_all()

    def batch_started(self, batch_no: int, batch_count: int) -> None:
        with self._lock:
            if batch_count > 1:
                self._current.job = f"Batch {batch_no + 1} out of {batch_count}"
            self._current.sampling_step = 0
        self._wake_all()

    def sampling_step(self, step: int, total_steps: int, make_preview: Callable[[], Any]) -> None:
        """A due preview is decoded on the preview thread when `make_preview` can `capture()` the
        latent (the engine's `PreviewSource`); other sources (a remote lane's fetched image, test
        observers) are called here, as before."""
        with self._lock:
            job = self._current
            job.sampling_step, job.sampling_steps = step, total_steps
            due = job.preview_due(step) and self._encode_preview is not None
            if due:
                job.last_preview_step = step
        if due:
            capture = getattr(make_preview, "capture", None)
            if capture is None:
                self._publish_preview(job, make_preview)
            else:
                render = capture()
                self._preview_thread.submit(lambda: self._publish_preview(job, render))
        self._wake_all()

    def _publish_preview(self, job: JobProgress, render: Callable[[], Any]) -> None:
        """Decode and encode one preview and show it, unless its job has ended meanwhile."""
        encoded = self._encode_preview(render())  # type: ignore[misc]
        if encoded is None:  # a remote lane may have no image to show yet
            return
        with self._lock:
            if job.ended:
                return
            job.previews_made += 1
            job.preview = LivePreview(job.previews_made, encoded.png_base64, encoded.data_uri)
        self._wake_all()

    def wait_for_previews(self, timeout: float) -> bool:
        """Whether the previews handed to the preview thread so far are done within `timeout` s."""
        return self._preview_thread.wait_idle(timeout)

    def batch_finished(self, batch_no: int) -> None:
        with self._lock:
            self._current.job_no = batch_no + 1
        self._wake_all()

    # the routes' side ----------------------------------------------------------------

    def complete(self, task_id: str, outcome: JobOutcome) -> None:
        """The answer of `task_id` is ready (or it failed): streams send `done`. A job that never
        reached the device (a cached answer, a refused request) counts as completed too."""
        with self._lock:
            _remember(self._outcomes, task_id, outcome)
            if task_id not in self._active and task_id not in self._finished:
                self._finished.append(task_id)
        self._wake_all()

    def claim(self, task_id: str, owner: str) -> None:
        """Record who submitted `task_id` (the caller's identity, "key:alice"): callers that may
        not see every task see only their own."""
        with self._lock:
            _remember(self._owners, task_id, owner)

    def owner(self, task_id: str) -> str | None:
        with self._lock:
            return self._owners.get(task_id)

    def queue_changed(self) -> None:
        """The scheduler's queue moved: queued jobs' positions may have changed."""
        self._wake_all()

    # readers -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        with self._lock:
            return not self._current.ended and self._current.job_count != 0

    def snapshot(self, skip_current_image: bool = False) -> dict[str, Any]:
        """The body of GET /sdapi/v1/progress (the job on the device), with A1111's formula and idle shape."""
        with self._lock:
            job = self._current
            state = job.state_dict()
            if job.ended or job.job_count == 0:
                return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None}
            progress = 0.01 + job.job_no / job.job_count
            if job.sampling_steps > 0:
                progress += job.sampling_step / job.sampling_steps / job.job_count
            elapsed = self._clock() - job.time_start
            eta_relative = elapsed / progress - elapsed
            image = None if skip_current_image or job.preview is None else job.preview.png_base64
            return {
                "progress": min(progress, 1.0),
                "eta_relative": eta_relative,
                "state": state,
                "current_image": image,
                "textinfo": job.textinfo,
            }

    def view(self, task_id: str) -> JobView:
        """One task's progress: active (on the device), completed, or neither (queued or unknown)."""
        with self._lock:
            active = task_id in self._active
            completed = task_id in self._finished
            outcome = self._outcomes.get(task_id)
            job = self._jobs.get(task_id)
            if job is None:
                return JobView(task_id, active, completed, outcome=outcome)
            fraction = job.fraction() if active else None
            return JobView(
                task_id, active, completed, job.job_no, job.job_count, job.sampling_step, job.sampling_steps,
                fraction, self._eta(job, fraction), job.preview if active else None, job.textinfo, outcome,
            )

    def _eta(self, job: JobProgress, fraction: float | None) -> float | None:
        """A1111: elapsed / progress - elapsed, None until there is progress."""
        if not fraction:
            return None
        elapsed = self._clock() - job.time_start
        return elapsed / fraction - elapsed

    # subscriptions (event streams) ----------------------------------------------------

    def subscribe(self) -> _Waker:
        """A waker on the running event loop, set whenever any job changes; `unsubscribe` it."""
        waker = _Waker(asyncio.get_running_loop())
        with self._lock:
            self._wakers.append(waker)
        return waker

    def unsubscribe(self, waker: _Waker) -> None:
        with self._lock:
            if waker in self._wakers:
                self._wakers.remove(waker)

    def _wake_all(self) -> None:
        with self._lock:
            wakers = list(self._wakers)
        gone = [waker for waker in wakers if not waker.wake()]
        if gone:
            with self._lock:
                self._wakers = [waker for waker in self._wakers if waker not in gone]


def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Insert as the newest entry and drop the oldest beyond OUTCOMES_KEPT."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > OUTCOMES_KEPT:
        table.popitem(last=False)

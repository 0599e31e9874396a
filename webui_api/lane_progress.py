"""A1111's single /progress view over several worker lanes (more than one job running at once).

With one lane (the default) the server uses a plain `ProgressTracker`. With several lanes
(`--ray`), every lane thread gets a tracker of its own, picked by the calling thread, so the
scheduler's begin/end and the engine's RunObserver calls of one lane never clobber another's.
`snapshot()` answers with the job that has run longest (what A1111's one-job state would show)
and `busy` is true while any lane runs a job; `lane_snapshots()` lists them all.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from .progress import CancelToken, JobOutcome, JobView, ProgressTracker


class LaneProgress:
    """Drop-in for ProgressTracker that keeps one tracker per calling (lane) thread."""

    def __init__(self, make_tracker: Callable[[], ProgressTracker]) -> None:
        self._make_tracker = make_tracker
        self._lock = threading.Lock()
        self._trackers: dict[int, ProgressTracker] = {}
        self._started: dict[int, float] = {}  # lane thread -> monotonic start of its running job
        self._last: int | None = None  # the lane that ran last (its counters stay visible when idle)
        # per-job facts shared by the lanes: owners, outcomes and the event-stream subscribers
        self._registry = make_tracker()

    def _mine(self) -> ProgressTracker:
        ident = threading.get_ident()
        with self._lock:
            tracker = self._trackers.get(ident)
            if tracker is None:
                tracker = self._trackers[ident] = self._make_tracker()
            return tracker

    # scheduler side ------------------------------------------------------------------

    def begin(
        self, job: str, job_count: int, job_timestamp: str, cancel: CancelToken, preview_every_n_steps: int,
        task_ids: tuple[str, ...] = (),
    ) -> None:
        import time

        ident = threading.get_ident()
        self._mine().begin(job, job_count, job_timestamp, cancel, preview_every_n_steps, task_ids=task_ids)
        with self._lock:
            self._started[ident] = time.monotonic()
            self._last = ident
        self._registry.queue_changed()

    def end(self) -> None:
        ident = threading.get_ident()
        self._mine().end()
        with self._lock:
            self._started.pop(ident, None)
        self._registry.queue_changed()

    # RunObserver ---------------------------------------------------------------------

    def batch_started(self, batch_no: int, batch_count: int) -> None:
        self._mine().batch_started(batch_no, batch_count)
        self._registry.queue_changed()

    def sampling_step(self, step: int, total_steps: int, make_preview: Callable[[], Any]) -> None:
        self._mine().sampling_step(step, total_steps, make_preview)
        self._registry.queue_changed()

    def batch_finished(self, batch_no: int) -> None:
        self._mine().batch_finished(batch_no)
        self._registry.queue_changed()

    # per-job progress (/internal/progress, event streams) ------------------------------

    def complete(self, task_id: str, outcome: JobOutcome) -> None:
        self._registry.complete(task_id, outcome)

    def claim(self, task_id: str, owner: str) -> None:
        self._registry.claim(task_id, owner)

    def owner(self, task_id: str) -> str | None:
        return self._registry.owner(task_id)

    def queue_changed(self) -> None:
        self._registry.queue_changed()

    def subscribe(self) -> Any:
        return self._registry.subscribe()

    def unsubscribe(self, waker: Any) -> None:
        self._registry.unsubscribe(waker)

    def view(self, task_id: str) -> JobView:
        """The lane that runs (or ran) the job answers; the outcome comes from the shared registry."""
        with self._lock:
            trackers = list(self._trackers.values())
        outcome = self._registry.view(task_id)
        views = [tracker.view(task_id) for tracker in trackers]
        chosen = next((v for v in views if v.active), None) or next((v for v in views if v.completed), None)
        if chosen is None:
            return outcome
        return dataclasses.replace(chosen, completed=chosen.completed or outcome.completed, outcome=outcome.outcome)

    # readers -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._started)

    def snapshot(self, skip_current_image: bool = False) -> dict[str, Any]:
        """The longest-running job's view; idle, the last lane's (A1111 keeps its counters)."""
        with self._lock:
            running = sorted(self._started, key=self._started.__getitem__)
            ident = running[0] if running else self._last
            tracker = self._trackers.get(ident) if ident is not None else None
        if tracker is None:
            return ProgressTracker().snapshot(skip_current_image)
        return tracker.snapshot(skip_current_image)

    def lane_snapshots(self, skip_current_image: bool = True) -> list[dict[str, Any]]:
        """Every running lane's view, oldest job first."""
        with self._lock:
            running = sorted(self._started, key=self._started.__getitem__)
            trackers = [self._trackers[ident] for ident in running]
        return [tracker.snapshot(skip_current_image) for tracker in trackers]

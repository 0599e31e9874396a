"""Progress and cancellation, passed explicitly to the engine (never module globals).

`CancelToken` carries the interrupt / skip flags a client sets through /sdapi/v1/interrupt
and /sdapi/v1/skip. `RunObserver` is the narrow interface the engine reports through; the
`ProgressTracker` (scheduler side) implements it and renders A1111's /progress view.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol


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


class ProgressTracker:
    """A1111's global `shared.state`, as an object: one per server, fed by the worker thread.

    The worker calls `begin` / `end` around a job and forwards the engine's `RunObserver`
    calls; HTTP handlers read `snapshot()` from other threads. A1111 renders the preview
    when /progress is polled; we render it on the worker every `preview_every_n_steps`
    steps instead, so a poll never touches the model.
    """

    def __init__(
        self, encode_preview: Callable[[Any], str | None] | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        import time

        self._lock = threading.Lock()
        self._clock = clock or time.time
        self._encode_preview = encode_preview
        self._job = ""
        self._job_count = 0
        self._job_no = 0
        self._job_timestamp = "0"
        self._sampling_step = 0
        self._sampling_steps = 0
        self._time_start = 0.0
        self._preview_every = 0
        self._last_preview_step = -1
        self._current_image: str | None = None
        self._textinfo: str | None = None
        self._cancel: CancelToken | None = None

    def begin(
        self, job: str, job_count: int, job_timestamp: str, cancel: CancelToken, preview_every_n_steps: int
    ) -> None:
        with self._lock:
            self._job, self._job_count, self._job_no = job, job_count, 0
            self._job_timestamp = job_timestamp
            self._sampling_step, self._sampling_steps = 0, 0
            self._time_start = self._clock()
            self._preview_every = preview_every_n_steps
            self._last_preview_step = -1
            self._current_image = None
            self._textinfo = None
            self._cancel = cancel

    def end(self) -> None:
        """Back to idle; like A1111 the step counters keep their last values."""
        with self._lock:
            self._job, self._job_count = "", 0
            self._current_image = None
            self._cancel = None

    # RunObserver -------------------------------------------------------------------

    def batch_started(self, batch_no: int, batch_count: int) -> None:
        with self._lock:
            if batch_count > 1:
                self._job = f"Batch {batch_no + 1} out of {batch_count}"
            self._sampling_step = 0

    def sampling_step(self, step: int, total_steps: int, make_preview: Callable[[], Any]) -> None:
        with self._lock:
            self._sampling_step, self._sampling_steps = step, total_steps
            due = self._preview_due(step)
            if due:
                self._last_preview_step = step
        if due and self._encode_preview is not None:
            encoded = self._encode_preview(make_preview())
            with self._lock:
                self._current_image = encoded

    def batch_finished(self, batch_no: int) -> None:
        with self._lock:
            self._job_no = batch_no + 1

    def _preview_due(self, step: int) -> bool:
        if self._preview_every <= 0:
            return False
        return self._last_preview_step < 0 or step - self._last_preview_step >= self._preview_every

    # Readers -----------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._job_count != 0

    def snapshot(self, skip_current_image: bool = False) -> dict[str, Any]:
        """The body of GET /sdapi/v1/progress, with A1111's formula and idle shape."""
        with self._lock:
            state = self._state_dict()
            if self._job_count == 0:
                return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None}
            progress = 0.01 + self._job_no / self._job_count
            if self._sampling_steps > 0:
                progress += self._sampling_step / self._sampling_steps / self._job_count
            elapsed = self._clock() - self._time_start
            eta_relative = elapsed / progress - elapsed
            image = None if skip_current_image else self._current_image
            return {
                "progress": min(progress, 1.0),
                "eta_relative": eta_relative,
                "state": state,
                "current_image": image,
                "textinfo": self._textinfo,
            }

    def _state_dict(self) -> dict[str, Any]:
        cancel = self._cancel
        return {
            "skipped": bool(cancel and cancel.skipped),
            "interrupted": bool(cancel and cancel.interrupted),
            "stopping_generation": False,
            "job": self._job,
            "job_count": self._job_count,
            "job_timestamp": self._job_timestamp,
            "job_no": self._job_no,
            "sampling_step": self._sampling_step,
            "sampling_steps": self._sampling_steps,
        }

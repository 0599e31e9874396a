"""Progress and cancellation, passed explicitly to the engine (never module globals).

`CancelToken` carries the interrupt / skip flags a client sets through /sdapi/v1/interrupt
and /sdapi/v1/skip. `RunObserver` is the narrow interface the engine reports through; the
`ProgressTracker` (scheduler side) implements it and renders A1111's /progress view.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol


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

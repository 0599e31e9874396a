"""A background thread that runs only the newest of the tasks handed to it.

Live previews are decoded here rather than on the worker thread, so the sampling loop never waits
on a VAE/TAESD decode. A decode slower than the preview interval does not pile up work: a task
handed in while another waits replaces it (a newer step makes the older preview pointless).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class LatestOnlyThread:
    """Runs submitted tasks one at a time on a daemon thread, dropping any not yet started when a
    newer one arrives. The thread starts on demand and ends when nothing is left to run."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._pending: Callable[[], None] | None = None
        self._running = False
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, task: Callable[[], None]) -> None:
        """Run `task` soon; a task submitted earlier that has not started yet is dropped."""
        with self._lock:
            self._pending = task
            self._idle.clear()
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every submitted task has run (or been dropped) within `timeout` seconds."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                task, self._pending = self._pending, None
                if task is None:
                    self._running = False
                    self._idle.set()
                    return
            try:
                task()
            except Exception:  # a preview must never fail a generation; the fault is logged, not hidden
                log.exception("%s: a task failed", self._name)

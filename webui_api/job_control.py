"""What /sdapi/v1/progress, /interrupt and /skip act on: the server's current job.

A1111 keeps one `state` per server: /progress shows its current job, /interrupt and /skip act
on it. One process answers from its own scheduler and tracker (`LocalJobControl`); the ingress
replicas of a cluster answer for the whole cluster (`cluster.ingress_control.ClusterJobControl`).
The routes see only the `JobControl` protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

from .scheduler import Scheduler


class JobControl(Protocol):
    def progress(self, skip_current_image: bool = False) -> dict[str, Any]:
        """The GET /sdapi/v1/progress body (A1111's shape) of the current job."""
        ...

    def interrupt(self) -> None: ...

    def skip(self) -> None: ...

    def close(self) -> None:
        """Stop whatever the control runs in the background (called when the app stops)."""
        ...


class LocalJobControl:
    """This process's scheduler and progress tracker (ProgressTracker or LaneProgress)."""

    def __init__(self, scheduler: Scheduler, progress: Any) -> None:
        self._scheduler = scheduler
        self._progress = progress

    def progress(self, skip_current_image: bool = False) -> dict[str, Any]:
        return dict(self._progress.snapshot(skip_current_image=skip_current_image))

    def interrupt(self) -> None:
        self._scheduler.interrupt()

    def skip(self) -> None:
        self._scheduler.skip()

    def close(self) -> None:
        """Nothing runs in the background."""

"""/progress, /interrupt and /skip of one ingress replica among several (`--ray-ingress-replicas N`).

Each replica runs a heartbeat thread that syncs with the job board every WATCH_INTERVAL: it
publishes the replica's own /progress view while it runs a job, and gets back the /interrupt
and /skip counts the other replicas received and the view of the cluster's longest-running
job. A new count is applied to this replica's scheduler, exactly as if the call had come here:
every running item is interrupted (remote ones through their lane, which forwards the flag to
the worker replica; items on the ingress's own engine directly). So any replica shows and
controls the job A1111's one `state` would, whichever replica queued it.

Counts from before this replica's first sync are history, never applied. A skip counted while
nothing runs here is spent, as a skip with no job is in A1111.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from ..scheduler import Scheduler
from .board import CONTROL_FLAGS
from .lanes import WATCH_INTERVAL

log = logging.getLogger(__name__)


class IngressBoard(Protocol):
    """The job board's ingress-replica methods, called synchronously (`RayBoard` over the actor)."""

    def ingress_sync(self, replica: str, progress: dict[str, Any] | None, image_changed: bool = True) -> dict[str, Any]:
        ...

    def signal(self, flag: str, origin: str) -> None: ...


class RayBoard:
    """The board actor behind the IngressBoard calls: syncs wait for the answer, signals do not
    (one caller's actor calls run in order, so a signal is counted before this replica's next sync)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def ingress_sync(self, replica: str, progress: dict[str, Any] | None, image_changed: bool = True) -> dict[str, Any]:
        import ray

        return dict(ray.get(self._handle.ingress_sync.remote(replica, progress, image_changed)))

    def signal(self, flag: str, origin: str) -> None:
        self._handle.signal.remote(flag, origin)


class ClusterJobControl:
    """JobControl for an ingress replica of a cluster; `sync()` is one heartbeat."""

    def __init__(self, board: IngressBoard, replica: str, scheduler: Scheduler, progress: Any,
                 interval: float = WATCH_INTERVAL) -> None:
        self._board = board
        self._replica = replica
        self._scheduler = scheduler
        self._progress = progress
        self._interval = interval
        self._lock = threading.Lock()
        self._applied: dict[str, int] | None = None  # the other replicas' counts acted on so far
        self._current: dict[str, Any] | None = None  # the board's longest-running job (replica, progress)
        self._sent_image: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # JobControl ------------------------------------------------------------------------

    def progress(self, skip_current_image: bool = False) -> dict[str, Any]:
        """The longest-running job of the cluster; this replica's own view when it is that job's
        replica, when nothing runs, or before the first sync."""
        with self._lock:
            current = self._current
        if current is None or current["replica"] == self._replica:
            return dict(self._progress.snapshot(skip_current_image=skip_current_image))
        body = dict(current["progress"])
        if skip_current_image:
            body["current_image"] = None
        return body

    def interrupt(self) -> None:
        self._scheduler.interrupt()
        self._board.signal("interrupt", self._replica)

    def skip(self) -> None:
        self._scheduler.skip()
        self._board.signal("skip", self._replica)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        from ray.exceptions import RayError

        try:  # idle now: not shown as busy until its view times out on the board
            self._board.ingress_sync(self._replica, None)
        except RayError:
            log.warning("ingress %s: could not tell the job board it stopped", self._replica, exc_info=True)

    # heartbeat -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="webui-api-ingress-sync", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        from ray.exceptions import RayError

        while not self._stop.wait(self._interval):
            try:
                self.sync()
            except RayError:  # the board unreachable for a moment: keep beating, say so
                log.warning("ingress %s: job board sync failed", self._replica, exc_info=True)

    def sync(self) -> None:
        """Publish this replica's view, apply the other replicas' new /interrupt and /skip calls,
        keep the cluster's current job for /progress."""
        view = self._own_view()
        image = None if view is None else view.get("current_image")
        image_changed = image is not self._sent_image
        if view is not None and not image_changed:
            view = {**view, "current_image": None}  # the board keeps the one it has
        answer = self._board.ingress_sync(self._replica, view, image_changed)
        self._sent_image = image
        self._apply(answer["signals"])
        with self._lock:
            self._current = answer["current"]

    def _own_view(self) -> dict[str, Any] | None:
        return dict(self._progress.snapshot()) if self._progress.busy else None

    def _apply(self, signals: dict[str, int]) -> None:
        applied, self._applied = self._applied, {flag: int(signals.get(flag, 0)) for flag in CONTROL_FLAGS}
        if applied is None:
            return  # first sync: what was counted before this replica existed is history
        if self._applied["interrupt"] > applied["interrupt"]:
            self._scheduler.interrupt()
        if self._applied["skip"] > applied["skip"]:
            self._scheduler.skip()

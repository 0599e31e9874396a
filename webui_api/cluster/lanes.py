"""`RayWorker`: a scheduler lane that runs work items on Ray Serve worker replicas.

A remote-capable item (one with a `RemoteCall`) goes to the worker deployment through a Serve
handle with `multiplexed_model_id` = checkpoint + VAE, so Serve prefers a replica that already
holds that model and loads it elsewhere only when none does. While the call runs, the lane
forwards the item's interrupt/skip flags to the job board (the replica polls them) and mirrors
the replica's progress into the lane's tracker, so /progress, /interrupt and /skip work as in
one process. Items without a RemoteCall (closures over ingress objects) run on the ingress's
own engine, as the single-process worker would run them.

A replica that dies mid-call surfaces as `WorkerLost`; the scheduler retries once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..progress import ProgressTracker
from ..scheduler import WorkItem
from ..workers import LocalWorker, WorkerLost, member_tokens

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.2  # seconds between flag forwards / progress mirrors while a remote call runs
WORKER_DEPLOYMENT = "worker"


@dataclass
class _Mirrored:
    """What the lane tracker has seen of a remote job's progress already."""

    job_no: int = 0
    step: int = -1
    interrupts_sent: set[int] = field(default_factory=set)  # members whose interrupt the board has


class RayWorker:
    """One lane: remote items to a Serve replica, the rest to the ingress's local engine."""

    def __init__(self, name: str, handle: Any, board: Any) -> None:
        self.name = name
        self._handle = handle
        self._board = board
        self._local = LocalWorker()

    def execute(self, item: WorkItem, progress: ProgressTracker) -> Any:
        if item.remote is None:
            return self._local.execute(item, progress)
        import ray

        job_id = uuid.uuid4().hex
        call = item.remote
        response = self._handle.options(multiplexed_model_id=call.model_key).run.remote(call, job_id)
        seen = _Mirrored()
        while True:
            try:
                return response.result(timeout_s=WATCH_INTERVAL)
            except TimeoutError:
                self._watch(job_id, item, progress, seen)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                raise WorkerLost(item.label, type(exc).__name__) from None
            except ray.exceptions.RayTaskError as exc:
                raise _cause(exc) from None

    def _watch(self, job_id: str, item: WorkItem, progress: ProgressTracker, seen: _Mirrored) -> None:
        """Forward newly set flags to the board, per member of a batch call; mirror the replica's
        latest progress. A forwarded skip is cleared here (the replica's engine clears its own at
        the next batch), so each later /skip reaches the replica too, as each skips one batch in A1111."""
        import ray

        for member, token in enumerate(member_tokens(item.cancel)):
            if token.interrupted and member not in seen.interrupts_sent:
                self._board.request.remote(job_id, "interrupt", member)
                seen.interrupts_sent.add(member)
            if token.skipped:
                self._board.request.remote(job_id, "skip", member)
                token.clear_skip()
        if item.progress is None:
            return
        snapshot = ray.get(self._board.progress.remote(job_id))
        if snapshot is not None:
            mirror_progress(progress, snapshot, seen)

    def close(self) -> None:
        """The handle and the board belong to the cluster; nothing to release per lane."""


def mirror_progress(progress: Any, snapshot: dict[str, Any], seen: _Mirrored) -> None:
    """Replay a replica's /progress snapshot into the lane's tracker through RunObserver calls."""
    state = snapshot["state"]
    job_no, job_count = int(state["job_no"]), int(state["job_count"])
    while seen.job_no < job_no:
        progress.batch_finished(seen.job_no)
        seen.job_no += 1
        if seen.job_no < job_count:
            progress.batch_started(seen.job_no, job_count)
    step, steps = int(state["sampling_step"]), int(state["sampling_steps"])
    if step != seen.step and steps > 0:
        seen.step = step
        image = snapshot.get("current_image")
        progress.sampling_step(step, steps, lambda: _decode_preview(image))


def _decode_preview(encoded: str | None) -> Any:
    if not encoded:
        return None
    from ..postprocess.encode import decode_image_base64

    return decode_image_base64(encoded)


def _cause(exc: Any) -> BaseException:
    """A replica-side error as its own exception (an ApiError keeps its status and message)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def ray_workers(lanes: int, handle: Any, board: Any = None) -> list[RayWorker]:
    """`lanes` RayWorkers sharing one handle to the worker deployment."""
    from .board import board_handle

    board = board if board is not None else board_handle()
    return [RayWorker(f"ray-{lane}", handle, board) for lane in range(lanes)]

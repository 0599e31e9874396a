"""The job board: where the ingress and the worker replicas meet about running jobs.

A replica registers every job it starts (job id -> replica), pushes the job's progress snapshot
and reads the job's interrupt/skip flags, a few times a second, in one round trip (`sync`).
Flags are per member: a remote call that carries a cross-request batch holds several requests'
jobs (member 0, 1, ...), and one request's interrupt stops only its own rows, as locally. The
ingress lane running that job sets the flags (`request`) and reads the snapshot (`progress`), so
an interrupt reaches the replica that runs the job, and no other. `JobBoard` is plain Python
(tested without Ray); `board_handle()` wraps it as one named, detached Ray actor per cluster
namespace, so it outlives an ingress restart.

With several ingress replicas the board is also where they meet (`ingress_sync`, `signal`):
each replica publishes its /progress view while it runs a job, and counts the /interrupt and
/skip calls every replica received, so any replica shows the cluster's longest-running job and
any replica's /interrupt or /skip reaches the jobs of every other (work it runs on its own CPU
engine included), as A1111's one `state` does.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

BOARD_NAME = "webui-api-job-board"
BOARD_NAMESPACE = "serve"  # where Serve runs its replicas; the board sits beside them
HISTORY = 256  # finished jobs remembered (job id -> replica) for /internal/cluster and tests
INGRESS_STALE_SECONDS = 5.0  # an ingress's published view is dropped when it has not synced for this long
CONTROL_FLAGS = ("interrupt", "skip")


@dataclass
class BoardEntry:
    """One running job as the board sees it."""

    replica: str
    actor_name: str
    model_key: str
    started: float = field(default_factory=time.time)
    flags: dict[str, set[int]] = field(default_factory=lambda: {"interrupt": set(), "skip": set()})  # members
    progress: dict[str, Any] | None = None


@dataclass
class IngressView:
    """One busy ingress replica's /progress view, as it last published it."""

    progress: dict[str, Any]
    started: float  # board time the job it shows was first seen (the order of "longest-running")
    seen: float  # board time of its last sync


class JobBoard:
    """Running jobs, their replicas, flags and progress; recently finished jobs' replicas."""

    def __init__(self) -> None:
        self._running: dict[str, BoardEntry] = {}
        self._pending_flags: dict[str, dict[str, set[int]]] = {}  # flags set before the replica registered
        self._finished: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._ingress_views: dict[str, IngressView] = {}  # busy ingress replica -> its /progress view
        self._signals: dict[str, dict[str, int]] = {flag: {} for flag in CONTROL_FLAGS}  # flag -> origin -> count

    # replica side ----------------------------------------------------------------------

    def register(self, job_id: str, replica: str, actor_name: str, model_key: str) -> None:
        entry = BoardEntry(replica, actor_name, model_key)
        for flag, members in self._pending_flags.pop(job_id, {}).items():
            entry.flags[flag] |= members
        self._running[job_id] = entry

    def sync(self, job_id: str, progress: dict[str, Any] | None) -> dict[str, list[int]]:
        """The replica's heartbeat for a job: store its progress, answer which members are to
        stop ("interrupt") or skip their current batch ("skip")."""
        entry = self._running.get(job_id)
        if entry is None:
            return {"interrupt": [], "skip": []}
        if progress is not None:
            entry.progress = progress
        flags = {flag: sorted(members) for flag, members in entry.flags.items()}
        entry.flags["skip"] = set()  # a skip ends the batch it hit (the token keeps it until then)
        return flags

    def unregister(self, job_id: str) -> None:
        entry = self._running.pop(job_id, None)
        self._pending_flags.pop(job_id, None)
        if entry is not None:
            self._finished.append({"job_id": job_id, "replica": entry.replica, "model_key": entry.model_key,
                                   "started": entry.started, "ended": time.time(),
                                   "interrupted": bool(entry.flags["interrupt"])})

    # ingress side ----------------------------------------------------------------------

    def request(self, job_id: str, flag: str, member: int = 0) -> bool:
        """Set "interrupt" or "skip" for one member of a job; True when its replica is known already."""
        if flag not in ("interrupt", "skip"):
            raise ValueError(f"unknown flag {flag!r}")
        entry = self._running.get(job_id)
        if entry is None:
            self._pending_flags.setdefault(job_id, {}).setdefault(flag, set()).add(member)
            return False
        entry.flags[flag].add(member)
        return True

    def progress(self, job_id: str) -> dict[str, Any] | None:
        entry = self._running.get(job_id)
        return None if entry is None else entry.progress

    def replica_of(self, job_id: str) -> str | None:
        entry = self._running.get(job_id)
        if entry is not None:
            return entry.replica
        return next((done["replica"] for done in reversed(self._finished) if done["job_id"] == job_id), None)

    def running(self) -> dict[str, dict[str, Any]]:
        """job id -> replica, actor name, model key, start time (for the cluster view and tests)."""
        return {
            job_id: {"replica": e.replica, "actor_name": e.actor_name, "model_key": e.model_key, "started": e.started}
            for job_id, e in self._running.items()
        }

    def finished(self) -> list[dict[str, Any]]:
        """Recently finished jobs, oldest first: job id, replica, model key, start/end, interrupted."""
        return list(self._finished)


    # several ingress replicas ------------------------------------------------------------

    def signal(self, flag: str, origin: str) -> None:
        """An /interrupt or /skip received by ingress replica `origin`, for every other replica."""
        if flag not in CONTROL_FLAGS:
            raise ValueError(f"unknown flag {flag!r}")
        counts = self._signals[flag]
        counts[origin] = counts.get(origin, 0) + 1

    def ingress_sync(self, replica: str, progress: dict[str, Any] | None, image_changed: bool = True,
                     now: float | None = None) -> dict[str, Any]:
        """An ingress replica's heartbeat: publish its /progress view (None: idle); answer the
        /interrupt and /skip counts of the other replicas, and the view of the replica whose job
        has run longest (None when all are idle). An unchanged preview is not sent again (`image_changed`)."""
        now = time.time() if now is None else now
        self._publish_view(replica, progress, image_changed, now)
        for name in [name for name, view in self._ingress_views.items() if view.seen < now - INGRESS_STALE_SECONDS]:
            del self._ingress_views[name]  # a replica that died while busy
        busy = sorted(self._ingress_views.items(), key=lambda item: (item[1].started, item[0]))
        current = {"replica": busy[0][0], "progress": busy[0][1].progress} if busy else None
        return {
            "signals": {flag: sum(n for origin, n in counts.items() if origin != replica)
                        for flag, counts in self._signals.items()},
            "current": current,
        }

    def _publish_view(self, replica: str, progress: dict[str, Any] | None, image_changed: bool, now: float) -> None:
        if progress is None:
            self._ingress_views.pop(replica, None)
            return
        previous = self._ingress_views.get(replica)
        job = progress["state"].get("job_timestamp")
        if previous is not None and previous.progress["state"].get("job_timestamp") == job:
            started, last_image = previous.started, previous.progress.get("current_image")
        else:
            started, last_image = now, None
        if not image_changed:
            progress = {**progress, "current_image": last_image}
        self._ingress_views[replica] = IngressView(progress, started, now)


def board_handle(namespace_actor_options: dict[str, Any] | None = None) -> Any:
    """The cluster's one JobBoard actor, created on first use (detached: it outlives an ingress)."""
    import ray

    options = {"name": BOARD_NAME, "namespace": BOARD_NAMESPACE, "get_if_exists": True, "lifetime": "detached",
               "num_cpus": 0}
    options.update(namespace_actor_options or {})
    return ray.remote(JobBoard).options(**options).remote()

"""The job board: where the ingress and the worker replicas meet about running jobs.

A replica registers every job it starts (job id -> replica), pushes the job's progress snapshot
and reads the job's interrupt/skip flags, a few times a second, in one round trip (`sync`).
Flags are per member: a remote call that carries a cross-request batch holds several requests'
jobs (member 0, 1, ...), and one request's interrupt stops only its own rows, as locally. The
ingress lane running that job sets the flags (`request`) and reads the snapshot (`progress`), so
an interrupt reaches the replica that runs the job, and no other. `JobBoard` is plain Python
(tested without Ray); `board_handle()` wraps it as one named, detached Ray actor per cluster
namespace, so it outlives an ingress restart.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

BOARD_NAME = "webui-api-job-board"
BOARD_NAMESPACE = "serve"  # where Serve runs its replicas; the board sits beside them
HISTORY = 256  # finished jobs remembered (job id -> replica) for /internal/cluster and tests


@dataclass
class BoardEntry:
    """One running job as the board sees it."""

    replica: str
    actor_name: str
    model_key: str
    started: float = field(default_factory=time.time)
    flags: dict[str, set[int]] = field(default_factory=lambda: {"interrupt": set(), "skip": set()})  # members
    progress: dict[str, Any] | None = None


class JobBoard:
    """Running jobs, their replicas, flags and progress; recently finished jobs' replicas."""

    def __init__(self) -> None:
        self._running: dict[str, BoardEntry] = {}
        self._pending_flags: dict[str, dict[str, set[int]]] = {}  # flags set before the replica registered
        self._finished: deque[dict[str, Any]] = deque(maxlen=HISTORY)

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


def board_handle(namespace_actor_options: dict[str, Any] | None = None) -> Any:
    """The cluster's one JobBoard actor, created on first use (detached: it outlives an ingress)."""
    import ray

    options = {"name": BOARD_NAME, "namespace": BOARD_NAMESPACE, "get_if_exists": True, "lifetime": "detached",
               "num_cpus": 0}
    options.update(namespace_actor_options or {})
    return ray.remote(JobBoard).options(**options).remote()

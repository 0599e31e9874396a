"""The persistent store of async tasks (agent-scheduler compatible): SQLite plus result files.

A task submitted to `/agent-scheduler/v1/queue/*` is written here before its id is returned,
so a crash never loses it: at the next start `recover()` puts tasks that were queued back in
line, retries once a task that was running when the process died, and marks it failed if it
dies again. Results (the response's images and info, not its echo of the request, which the
row already holds) live in one file per task under `<data dir>/tasks/results`, not in the
database, which stays small.

Disk is bounded: `enforce_caps` deletes the oldest finished tasks until at most `max_count`
finished tasks and `max_bytes` of requests plus results remain, and `room_for_more` tells the
queue route when pending tasks alone fill the store. Each task belongs to its `owner` (the
caller identity that queued it); the listing methods filter by owner when asked to.

Only the standard library (and the project's path rule): `sqlite3` with one connection
guarded by a lock, because the event loop and the thread that writes result files both use it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import resolve_inside

PENDING, RUNNING, DONE, FAILED, INTERRUPTED = "pending", "running", "done", "failed", "interrupted"
STATUSES = (PENDING, RUNNING, DONE, FAILED, INTERRUPTED)
MAX_ATTEMPTS = 2  # the first run plus one retry after a crash
TASK_TYPES = ("txt2img", "img2img")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    callback_url TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    owner TEXT,
    size INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = "id, type, params, status, priority, attempts, callback_url, error, created_at, updated_at, owner, size"
RESULT_FIELDS = ("images", "info")  # what a result file keeps of a response (the request is in the row)
FINISHED = (DONE, FAILED, INTERRUPTED)
TIER_SPAN = 10**13  # ms; one scheduler-priority step moves a task ahead of ~300 years of FIFO
NORMAL_TIER = 10  # scheduler.PRIORITY_NORMAL (not imported: this module needs only the stdlib)


@dataclass(frozen=True)
class TaskRecord:
    """One row of the store; `params` is the generation request body as submitted."""

    id: str
    type: str
    params: dict[str, Any]
    status: str
    priority: int
    attempts: int
    callback_url: str | None
    error: str | None
    created_at: float
    updated_at: float
    owner: str | None = None  # the caller identity that queued it ("key:alice", "user:bob", "ip:...")
    size: int = 0  # bytes on disk: the stored request plus the result file

    @property
    def owner_name(self) -> str:
        """The caller's name for the audit log ("alice" of "key:alice")."""
        return (self.owner or "anonymous").partition(":")[2] or (self.owner or "anonymous")

    @property
    def tier(self) -> int:
        """The scheduler priority the task was queued with (its `priority` is tier-offset FIFO)."""
        return NORMAL_TIER + round((self.priority - int(self.created_at * 1000)) / TIER_SPAN)

    @classmethod
    def from_row(cls, row: tuple) -> TaskRecord:
        values = list(row)
        values[2] = json.loads(values[2])
        return cls(*values)


@dataclass(frozen=True)
class RecoveryReport:
    """What `recover()` did at start-up, for the log."""

    requeued: int
    failed: int


class TaskStore:
    """SQLite rows for task state; JSON files for results."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.results_dir = self.root / "results"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "tasks.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Stores written before the `owner` and `size` columns get them on first open."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)").fetchall()}
        if "owner" not in columns:
            self._db.execute("ALTER TABLE tasks ADD COLUMN owner TEXT")
        if "size" not in columns:
            self._db.execute("ALTER TABLE tasks ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
            self._db.execute("UPDATE tasks SET size = length(params)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # writing -------------------------------------------------------------------------

    def create(
        self, task_type: str, params: dict[str, Any], callback_url: str | None = None,
        tier: int = NORMAL_TIER, owner: str | None = None,
    ) -> TaskRecord:
        """Persist a new pending task. Its priority is its creation time in ms (FIFO, like
        agent-scheduler), shifted by TIER_SPAN per scheduler-priority step away from normal,
        so a high-tier key's tasks run before every normal one and FIFO holds within a tier."""
        if task_type not in TASK_TYPES:
            raise ValueError(f"task type must be one of {TASK_TYPES}, got {task_type!r}")
        now = time.time()
        task_id = str(uuid.uuid4())
        priority = int(now * 1000) + (tier - NORMAL_TIER) * TIER_SPAN
        stored = json.dumps(params)
        self._execute(
            f"INSERT INTO tasks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, ?, NULL, ?, ?, ?, ?)",
            (task_id, task_type, stored, PENDING, priority, callback_url, now, now, owner, len(stored.encode())),
        )
        created = self.get(task_id)
        assert created is not None  # just inserted under the same connection
        return created

    def _set(self, task_id: str, status: str, error: str | None = None, attempts_delta: int = 0) -> None:
        self._execute(
            "UPDATE tasks SET status = ?, error = ?, attempts = attempts + ?, updated_at = ? WHERE id = ?",
            (status, error, attempts_delta, time.time(), task_id),
        )

    def mark_running(self, task_id: str) -> None:
        """Counts an attempt: a task that dies while running is retried only MAX_ATTEMPTS - 1 times."""
        self._set(task_id, RUNNING, attempts_delta=1)

    def claim(self, task_id: str) -> bool:
        """Take a pending task to run it (counts an attempt); False when it is no longer pending.
        One process runs this store's line, so no lease is kept (see task_store_redis for shared stores)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE tasks SET status = ?, attempts = attempts + 1, updated_at = ? WHERE id = ? AND status = ?",
                (RUNNING, time.time(), task_id, PENDING),
            )
            return cursor.rowcount == 1

    def renew(self, task_id: str) -> None:
        """Leases are for stores shared by several processes; a local store has none to renew."""

    leases = False  # recover() re-queues every running task: call it at start-up only

    def return_to_queue(self, task_id: str) -> None:
        """A graceful stop interrupted the task: it goes back in line, and that run does not count."""
        self._set(task_id, PENDING, attempts_delta=-1)

    def finish(self, task_id: str, result: dict[str, Any]) -> None:
        """Write the result file first, then flip the status: DONE always has its file. Only
        the images and info are kept: the request the response echoes is the row's params."""
        path = self.result_path(task_id)
        partial = path.with_suffix(".part")
        text = json.dumps({key: result[key] for key in RESULT_FIELDS if key in result})
        partial.write_text(text)
        partial.replace(path)
        self._set(task_id, DONE)
        self._execute("UPDATE tasks SET size = size + ? WHERE id = ?", (len(text.encode()), task_id))

    def fail(self, task_id: str, error: str) -> None:
        self._set(task_id, FAILED, error=error)

    def interrupt(self, task_id: str) -> None:
        self._set(task_id, INTERRUPTED, error="interrupted by the client")

    def delete(self, task_id: str) -> bool:
        """Remove a task and its result; False if there was no such task."""
        if self.get(task_id) is None:
            return False
        self._execute("DELETE FROM tasks WHERE id = ?", (task_id,))
        self.result_path(task_id).unlink(missing_ok=True)
        return True

    def purge_finished(self, older_than_seconds: float, now: float | None = None) -> int:
        """Retention: delete finished tasks (and their result files) last updated before the cutoff."""
        cutoff = (time.time() if now is None else now) - older_than_seconds
        marks = ",".join("?" * len(FINISHED))
        old = self._execute(f"SELECT id FROM tasks WHERE status IN ({marks}) AND updated_at < ?", (*FINISHED, cutoff))
        for (task_id,) in old:
            self.delete(task_id)
        return len(old)

    def enforce_caps(self, max_count: int, max_bytes: int) -> int:
        """Delete the oldest finished tasks until at most `max_count` finished ones (0: no cap)
        and `max_bytes` of stored requests and results (0: no cap) remain; returns how many."""
        marks = ",".join("?" * len(FINISHED))
        oldest_first = self._execute(
            f"SELECT id, size FROM tasks WHERE status IN ({marks}) ORDER BY updated_at, created_at", FINISHED)
        total = self._execute("SELECT COALESCE(SUM(size), 0) FROM tasks")[0][0]
        excess = max(0, len(oldest_first) - max_count) if max_count > 0 else 0
        deleted = 0
        for task_id, size in oldest_first:
            if deleted >= excess and (max_bytes <= 0 or total <= max_bytes):
                break
            self.delete(task_id)
            total -= size
            deleted += 1
        return deleted

    def room_for_more(self, max_count: int, max_bytes: int) -> bool:
        """Whether another task may be queued: the pending ones alone stay under both caps."""
        query = "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM tasks WHERE status = ?"
        count, size = self._execute(query, (PENDING,))[0]
        return (max_count <= 0 or count < max_count) and (max_bytes <= 0 or size < max_bytes)

    def recover(self) -> RecoveryReport:
        """At start-up: tasks left RUNNING by a dead process are retried once, then failed."""
        exhausted = self._execute("SELECT id FROM tasks WHERE status = ? AND attempts >= ?", (RUNNING, MAX_ATTEMPTS))
        for (task_id,) in exhausted:
            self.fail(task_id, f"the server stopped while this task ran, {MAX_ATTEMPTS} times; not retried again")
        retried = self._execute("SELECT id FROM tasks WHERE status = ?", (RUNNING,))
        for (task_id,) in retried:
            self._set(task_id, PENDING)
        return RecoveryReport(requeued=len(retried), failed=len(exhausted))

    # reading -------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        rows = self._execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
        return TaskRecord.from_row(rows[0]) if rows else None

    def next_pending(self) -> TaskRecord | None:
        pending = self.pending(limit=1)
        return pending[0] if pending else None

    def pending(self, limit: int = 20, offset: int = 0, owner: str | None = None) -> list[TaskRecord]:
        """Pending tasks in run order; only `owner`'s when given."""
        mine, args = _owner_filter(owner)
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE status = ?{mine} ORDER BY priority, created_at LIMIT ? OFFSET ?",
            (PENDING, *args, limit, offset),
        )
        return [TaskRecord.from_row(row) for row in rows]

    def count(self, status: str, owner: str | None = None) -> int:
        mine, args = _owner_filter(owner)
        return self._execute(f"SELECT COUNT(*) FROM tasks WHERE status = ?{mine}", (status, *args))[0][0]

    def position(self, task: TaskRecord) -> int | None:
        """0-based place in the pending line, None when the task is not pending."""
        if task.status != PENDING:
            return None
        ahead = self._execute(
            "SELECT COUNT(*) FROM tasks WHERE status = ? AND (priority < ? OR (priority = ? AND created_at < ?))",
            (PENDING, task.priority, task.priority, task.created_at),
        )
        return ahead[0][0]

    def result_path(self, task_id: str) -> Path:
        if not _is_uuid(task_id):
            raise ValueError(f"task ids are UUIDs, got {task_id!r}")
        return resolve_inside(self.results_dir, f"{task_id}.json", what="task result")

    def result(self, task_id: str) -> dict[str, Any] | None:
        path = self.result_path(task_id)
        return json.loads(path.read_text()) if path.is_file() else None


def _owner_filter(owner: str | None) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (and its argument) restricting a query to one owner's tasks."""
    return (" AND owner = ?", (owner,)) if owner is not None else ("", ())


def _is_uuid(value: str) -> bool:
    """Task ids become file names: only canonical UUIDs may, never a path."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False

"""Async tasks in Redis: one store shared by every ingress of a cluster (`--ray` with `--redis-url`).

The same interface and semantics as the SQLite `TaskStore` (webui_api.tasks), plus what several
ingress replicas need so that every accepted task runs exactly once:

- **claim**: a runner takes a pending task with `claim(id)`, which removes it from the pending
  line atomically (ZREM answers 1 to one caller only), marks it running and counts the attempt.
- **leases**: a running task carries a lease deadline that its runner renews (`renew`) while the
  task runs. `recover()` re-queues (or, after MAX_ATTEMPTS, fails) only running tasks whose lease
  ran out, so an ingress that starts never steals a task another live ingress is running, and a
  task whose ingress died is picked up by the next `recover()` of any ingress.
- results live in Redis too (in the task's hash), so any ingress answers `/results`.

Keys (prefix `webui-api:tasks:`): `task:<id>` (hash: the record, `result`), `pending` (sorted
set by priority), `running` (sorted set by lease deadline), `status:<status>` (sets), `finished`
(sorted set by update time, for retention and caps).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from .tasks import (
    DONE,
    FAILED,
    FINISHED,
    INTERRUPTED,
    MAX_ATTEMPTS,
    NORMAL_TIER,
    PENDING,
    RESULT_FIELDS,
    RUNNING,
    STATUSES,
    TASK_TYPES,
    TIER_SPAN,
    RecoveryReport,
    TaskRecord,
)

PREFIX = "webui-api:tasks:"
LEASE_SECONDS = 60.0  # a running task whose runner has not renewed it for this long is orphaned
_FIELDS = ("id", "type", "params", "status", "priority", "attempts", "callback_url", "error", "created_at",
           "updated_at", "owner", "size")


class RedisTaskStore:
    """Task rows as Redis hashes; the pending line and the running leases as sorted sets."""

    leases = True  # recover() touches only expired leases: runners may call it at any time

    def __init__(self, url: str | None = None, client: Any = None, lease_seconds: float = LEASE_SECONDS) -> None:
        if client is None:
            import redis

            client = redis.Redis.from_url(url or "redis://127.0.0.1:6379/0")
        self._redis = client
        self.lease_seconds = lease_seconds

    def close(self) -> None:
        self._redis.close()

    # keys ----------------------------------------------------------------------------

    @staticmethod
    def _task(task_id: str) -> str:
        return f"{PREFIX}task:{task_id}"

    @staticmethod
    def _status(status: str) -> str:
        return f"{PREFIX}status:{status}"

    # writing -------------------------------------------------------------------------

    def create(
        self, task_type: str, params: dict[str, Any], callback_url: str | None = None,
        tier: int = NORMAL_TIER, owner: str | None = None,
    ) -> TaskRecord:
        """Persist a new pending task (priority: creation ms shifted by tier, as TaskStore)."""
        if task_type not in TASK_TYPES:
            raise ValueError(f"task type must be one of {TASK_TYPES}, got {task_type!r}")
        now = time.time()
        task_id = str(uuid.uuid4())
        priority = int(now * 1000) + (tier - NORMAL_TIER) * TIER_SPAN
        body = json.dumps(params)
        record = {"id": task_id, "type": task_type, "params": body, "status": PENDING, "priority": priority,
                  "attempts": 0, "callback_url": callback_url or "", "error": "", "created_at": now,
                  "updated_at": now, "owner": owner or "", "size": len(body.encode())}
        pipe = self._redis.pipeline()
        pipe.hset(self._task(task_id), mapping=record)
        pipe.zadd(f"{PREFIX}pending", {task_id: priority})
        pipe.sadd(self._status(PENDING), task_id)
        pipe.execute()
        return self.get(task_id)  # type: ignore[return-value]

    def _set(self, task_id: str, status: str, error: str | None = None, attempts_delta: int = 0) -> None:
        old = self._redis.hget(self._task(task_id), "status")
        if old is None:
            return
        now = time.time()
        pipe = self._redis.pipeline()
        pipe.hset(self._task(task_id), mapping={"status": status, "error": error or "", "updated_at": now})
        if attempts_delta:
            pipe.hincrby(self._task(task_id), "attempts", attempts_delta)
        pipe.srem(self._status(old.decode()), task_id)
        pipe.sadd(self._status(status), task_id)
        pipe.zrem(f"{PREFIX}running", task_id)
        if status == PENDING:
            priority = int(self._redis.hget(self._task(task_id), "priority") or 0)
            pipe.zadd(f"{PREFIX}pending", {task_id: priority})
        else:
            pipe.zrem(f"{PREFIX}pending", task_id)
        if status in FINISHED:
            pipe.zadd(f"{PREFIX}finished", {task_id: now})
        pipe.execute()

    def claim(self, task_id: str) -> bool:
        """Take a pending task for this runner; False when another runner took it first."""
        if not self._redis.zrem(f"{PREFIX}pending", task_id):
            return False
        pipe = self._redis.pipeline()
        pipe.hset(self._task(task_id), mapping={"status": RUNNING, "updated_at": time.time()})
        pipe.hincrby(self._task(task_id), "attempts", 1)
        pipe.srem(self._status(PENDING), task_id)
        pipe.sadd(self._status(RUNNING), task_id)
        pipe.zadd(f"{PREFIX}running", {task_id: time.time() + self.lease_seconds})
        pipe.execute()
        return True

    def renew(self, task_id: str) -> None:
        """The runner of a running task is alive: push its lease deadline forward."""
        self._redis.zadd(f"{PREFIX}running", {task_id: time.time() + self.lease_seconds}, xx=True)

    def mark_running(self, task_id: str) -> None:
        """TaskStore's interface: claim, and fail loudly if another runner had the task."""
        if not self.claim(task_id):
            raise RuntimeError(f"task {task_id} is not pending (another runner took it)")

    def return_to_queue(self, task_id: str) -> None:
        self._set(task_id, PENDING, attempts_delta=-1)

    def finish(self, task_id: str, result: dict[str, Any]) -> None:
        """Store the result, then flip the status: DONE always has its result."""
        text = json.dumps({key: result[key] for key in RESULT_FIELDS if key in result})
        self._redis.hset(self._task(task_id), "result", text)
        self._redis.hincrby(self._task(task_id), "size", len(text.encode()))
        self._set(task_id, DONE)

    def fail(self, task_id: str, error: str) -> None:
        self._set(task_id, FAILED, error=error)

    def interrupt(self, task_id: str) -> None:
        self._set(task_id, INTERRUPTED, error="interrupted by the client")

    def delete(self, task_id: str) -> bool:
        status = self._redis.hget(self._task(task_id), "status")
        if status is None:
            return False
        pipe = self._redis.pipeline()
        pipe.delete(self._task(task_id))
        for key in ("pending", "running", "finished"):
            pipe.zrem(f"{PREFIX}{key}", task_id)
        pipe.srem(self._status(status.decode()), task_id)
        pipe.execute()
        return True

    def purge_finished(self, older_than_seconds: float, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - older_than_seconds
        old = [member.decode() for member in self._redis.zrangebyscore(f"{PREFIX}finished", "-inf", f"({cutoff}")]
        for task_id in old:
            self.delete(task_id)
        return len(old)

    def enforce_caps(self, max_count: int, max_bytes: int) -> int:
        """Oldest finished tasks go first until the count and byte caps hold (0: no cap)."""
        oldest_first = [member.decode() for member in self._redis.zrange(f"{PREFIX}finished", 0, -1)]
        total = sum(record.size for record in self._records(self._all_ids()))
        excess = max(0, len(oldest_first) - max_count) if max_count > 0 else 0
        deleted = 0
        for task_id in oldest_first:
            if deleted >= excess and (max_bytes <= 0 or total <= max_bytes):
                break
            record = self.get(task_id)
            self.delete(task_id)
            total -= record.size if record else 0
            deleted += 1
        return deleted

    def room_for_more(self, max_count: int, max_bytes: int) -> bool:
        pending = list(self._records(self._ids(PENDING)))
        size = sum(record.size for record in pending)
        return (max_count <= 0 or len(pending) < max_count) and (max_bytes <= 0 or size < max_bytes)

    def recover(self, now: float | None = None) -> RecoveryReport:
        """Running tasks whose lease ran out (their ingress died) are retried once, then failed.
        Tasks other live runners hold (lease still valid) are left alone."""
        moment = time.time() if now is None else now
        orphaned = [m.decode() for m in self._redis.zrangebyscore(f"{PREFIX}running", "-inf", f"({moment}")]
        requeued = failed = 0
        for task_id in orphaned:
            if not self._redis.zrem(f"{PREFIX}running", task_id):
                continue  # another ingress recovered it at the same moment
            record = self.get(task_id)
            if record is None:
                continue
            if record.attempts >= MAX_ATTEMPTS:
                self.fail(task_id, f"the server stopped while this task ran, {MAX_ATTEMPTS} times; not retried again")
                failed += 1
            else:
                self._set(task_id, PENDING)
                requeued += 1
        return RecoveryReport(requeued=requeued, failed=failed)

    # reading -------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self._redis.hgetall(self._task(task_id))
        return _record(raw) if raw else None

    def next_pending(self) -> TaskRecord | None:
        pending = self.pending(limit=1)
        return pending[0] if pending else None

    def pending(self, limit: int = 20, offset: int = 0, owner: str | None = None) -> list[TaskRecord]:
        ids = [member.decode() for member in self._redis.zrange(f"{PREFIX}pending", 0, -1)]
        records = [r for r in self._records(ids) if owner is None or r.owner == owner]
        records.sort(key=lambda r: (r.priority, r.created_at))
        return records[offset:offset + limit]

    def count(self, status: str, owner: str | None = None) -> int:
        if status not in STATUSES:
            return 0
        if owner is None:
            return int(self._redis.scard(self._status(status)))
        return sum(1 for record in self._records(self._ids(status)) if record.owner == owner)

    def position(self, task: TaskRecord) -> int | None:
        if task.status != PENDING:
            return None
        return sum(1 for r in self.pending(limit=10**9)
                   if r.priority < task.priority or (r.priority == task.priority and r.created_at < task.created_at))

    def result(self, task_id: str) -> dict[str, Any] | None:
        text = self._redis.hget(self._task(task_id), "result")
        return json.loads(text) if text else None

    def _ids(self, status: str) -> list[str]:
        return [member.decode() for member in self._redis.smembers(self._status(status))]

    def _all_ids(self) -> list[str]:
        return [task_id for status in STATUSES for task_id in self._ids(status)]

    def _records(self, ids: list[str]) -> Iterator[TaskRecord]:
        for task_id in ids:
            record = self.get(task_id)
            if record is not None:
                yield record


def _record(raw: dict[bytes, bytes]) -> TaskRecord:
    values = {key.decode(): value.decode() for key, value in raw.items()}
    return TaskRecord(
        id=values["id"], type=values["type"], params=json.loads(values["params"]), status=values["status"],
        priority=int(values["priority"]), attempts=int(values["attempts"]),
        callback_url=values.get("callback_url") or None, error=values.get("error") or None,
        created_at=float(values["created_at"]), updated_at=float(values["updated_at"]),
        owner=values.get("owner") or None, size=int(values.get("size", 0)),
    )

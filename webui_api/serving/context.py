"""What the serving layer knows about one generation request while it runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..scheduler import PRIORITY_NORMAL
from .keys import Caller, KeyFileError, parse_tier

PRIORITY_HEADER = "x-priority"
LOWEST_REQUESTED_PRIORITY = 1000  # a request may ask to run later than "low" (20), up to this; more is this


@dataclass
class RequestContext:
    """Filled in as the request moves on: the cache outcome, then the queue and device times."""

    caller: str = "internal"
    priority: int = PRIORITY_NORMAL
    owner: str | None = None  # the caller's identity ("key:alice"): who owns an async task
    audited: bool = False  # a generation entry was written for this request
    task_id: str | None = None
    cache: str = "miss"  # "hit" when the result cache answered
    cache_key: str | None = None
    started: float = field(default_factory=time.monotonic)
    wait_seconds: float | None = None
    run_seconds: float | None = None

    def timings(self) -> dict[str, float | None]:
        return {"wait": self.wait_seconds, "run": self.run_seconds, "total": time.monotonic() - self.started}


def effective_priority(caller: Caller, requested: Any = None) -> int:
    """The scheduler priority of a request: what it asks for (a number or high/normal/low),
    never better (lower) than its key's tier allows. Unparseable values are a 400."""
    if requested is None or requested == "":
        return caller.priority
    try:
        wanted = parse_tier(requested, f"{PRIORITY_HEADER} / priority")
    except KeyFileError as exc:
        from ..errors import BadRequest

        raise BadRequest(str(exc)) from exc
    # capped: priorities end up in SQLite (tasks: priority x 10**13 ms must fit in 64 bits)
    return max(min(wanted, LOWEST_REQUESTED_PRIORITY), caller.priority)


def context_for(caller: Caller, requested_priority: Any = None, task_id: str | None = None) -> RequestContext:
    return RequestContext(caller=caller.name, priority=effective_priority(caller, requested_priority), task_id=task_id,
                          owner=caller.identity)

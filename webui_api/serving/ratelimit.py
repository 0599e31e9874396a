"""Per-caller rate limits with the `limits` library: in memory by default, Redis when a URL
is given (then every server process behind a load balancer shares the same budgets).

A moving window: "10/minute" means at most 10 submissions in any 60 seconds. When refused,
the caller learns when the oldest counted request leaves the window (Retry-After).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from ..errors import ApiError

NAMESPACE = "webui-api"
log = logging.getLogger(__name__)


def _storage_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable storage raises: OS-level errors, and redis' own when it is installed."""
    try:
        import redis
    except ImportError:
        return (OSError,)
    return (OSError, redis.RedisError)


class RateLimited(ApiError):
    """429 in A1111's error body, with the seconds to wait in Retry-After."""

    status_code = 429

    def __init__(self, who: str, limit: str, retry_after: int) -> None:
        super().__init__(
            f"Rate limit exceeded for {who}: {limit}; retry in {retry_after} s",
            errors=f"limit {limit!r} reached",
        )
        self.headers = {"Retry-After": str(retry_after)}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0  # seconds, when not allowed


class RateLimiter:
    """Checks and counts one hit per submission against the caller's limit string(s)."""

    def __init__(self, storage_uri: str = "memory://") -> None:
        from limits import storage, strategies

        self.storage_uri = storage_uri
        self._storage = storage.storage_from_string(storage_uri)
        self._limiter = strategies.MovingWindowRateLimiter(self._storage)

    @classmethod
    def for_redis(cls, redis_url: str | None) -> RateLimiter:
        return cls(redis_url if redis_url else "memory://")

    def hit(self, identity: str, limit_text: str) -> Decision:
        """Count one request for `identity`; refuse (without counting) when any limit is used up."""
        from limits import parse_many

        items = parse_many(limit_text)
        for item in items:
            if not self._limiter.test(item, NAMESPACE, identity):
                return Decision(False, self._retry_after(item, identity))
        for item in items:
            self._limiter.hit(item, NAMESPACE, identity)
        return Decision(True)

    def _retry_after(self, item, identity: str) -> int:
        stats = self._limiter.get_window_stats(item, NAMESPACE, identity)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def check(self, identity: str, name: str, limit_text: str | None) -> None:
        """Raise RateLimited when `identity` is over `limit_text` (None: unlimited)."""
        if not limit_text:
            return
        try:
            decision = self.hit(identity, limit_text)
        except _storage_errors() as exc:  # Redis down: serve rather than refuse everyone
            log.error("rate limit storage %s unreachable (%s); request let through", self.storage_uri, exc)
            return
        if not decision.allowed:
            raise RateLimited(name, limit_text, decision.retry_after)

    def reset(self) -> None:
        """Forget all counters (tests; an operator after changing limits)."""
        self._storage.reset()

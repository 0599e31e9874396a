"""A cache of whole generation responses for requests that are fully deterministic.

With every seed fixed (seed != -1, and subseed fixed or unused) the same request on the same
checkpoint with the same options gives the same images, so a repeat can be answered from the
cache without touching the device. The key is the SHA-256 of canonical JSON: the route, the
effective request after styles and pasted infotext, every option the job sees (the checkpoint
title and hash among them) and the server version. Requests with side effects (save_images)
or whose run was interrupted are never stored.

Two stores with the same interface: files under the data dir (default), evicted least recently
used first when over the byte budget; or Redis (--redis-url), where an index of access times
does the same across every process sharing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

from .. import __version__

log = logging.getLogger(__name__)

REDIS_PREFIX = "webui-api:result:"
REDIS_INDEX = "webui-api:result-index"  # sorted set: key -> last access time
REDIS_BYTES = "webui-api:result-bytes"  # total size of the stored entries


class StoreError(Exception):
    """A cache store that cannot be reached; generation goes on without the cache."""


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    import redis

    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"redis: {exc}") from exc


class ResultStore(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...


def is_deterministic(request: Any) -> bool:
    """All randomness is pinned by the request: the seed, and the subseed when it is mixed in."""
    if request.seed is None or int(request.seed) == -1:
        return False
    if request.subseed_strength and (request.subseed is None or int(request.subseed) == -1):
        return False
    return not getattr(request, "save_images", False)


def cache_key(route: str, request: Any, options: Mapping[str, Any]) -> str | None:
    """The canonical hash of a deterministic request; None when it cannot be cached."""
    if not is_deterministic(request):
        return None
    material = {
        "version": __version__,
        "route": route,
        "request": request.model_dump(mode="json"),
        # fields the schema leaves out of dumps but that shape the answer
        "unlisted": {name: getattr(request, name) for name in type(request).model_fields
                     if type(request).model_fields[name].exclude},
        "options": dict(options),
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class DiskResultStore:
    """One file per response under `root`; least recently read first out past `max_bytes`."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total = sum(path.stat().st_size for path in self.root.glob("*.json"))

    def _path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache keys are sha256 hex digests, got {key!r}")
        return self.root / f"{key}.json"

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        with self._lock:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            os.utime(path)  # the access time the eviction order uses
        return data

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return  # larger than the whole budget: storing it would evict everything
        path = self._path(key)
        with self._lock:
            previous = path.stat().st_size if path.exists() else 0
            partial = path.with_suffix(".part")
            partial.write_bytes(value)
            partial.replace(path)
            self._total += len(value) - previous
            self._evict()

    def _evict(self) -> None:
        if self._total <= self.max_bytes:
            return
        for path in sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime):
            if self._total <= self.max_bytes:
                return
            self._total -= path.stat().st_size
            path.unlink(missing_ok=True)

    @property
    def total_bytes(self) -> int:
        return self._total


class RedisResultStore:
    """The same in Redis: entries as strings, a sorted set of access times for LRU eviction."""

    def __init__(self, url: str, max_bytes: int) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self.max_bytes = max_bytes

    def get(self, key: str) -> bytes | None:
        with _redis_errors():
            # redis-py types every reply as bytes | str; without decode_responses they are bytes
            data = cast(bytes | None, self._redis.get(REDIS_PREFIX + key))
            if data is not None:
                self._redis.zadd(REDIS_INDEX, {key: time.time()})
        return data

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with _redis_errors():
            self._put(key, value)

    def _put(self, key: str, value: bytes) -> None:
        old = self._redis.strlen(REDIS_PREFIX + key)
        pipe = self._redis.pipeline()
        pipe.set(REDIS_PREFIX + key, value)
        pipe.zadd(REDIS_INDEX, {key: time.time()})
        pipe.incrby(REDIS_BYTES, len(value) - old)
        pipe.execute()
        self._evict()

    def _evict(self) -> None:
        while int(self._redis.get(REDIS_BYTES) or 0) > self.max_bytes:
            oldest = self._redis.zpopmin(REDIS_INDEX, 1)
            if not oldest:
                return
            key = cast(bytes, oldest[0][0]).decode()
            size = self._redis.strlen(REDIS_PREFIX + key)
            self._redis.delete(REDIS_PREFIX + key)
            self._redis.decrby(REDIS_BYTES, size)

    @property
    def total_bytes(self) -> int:
        return int(self._redis.get(REDIS_BYTES) or 0)


class ResultCache:
    """The lookup/store pair the generation routes call; disabled when `store` is None."""

    def __init__(self, store: ResultStore | None) -> None:
        self.store = store

    @classmethod
    def from_settings(cls, data_dir: Path, size_mb: float, redis_url: str | None) -> ResultCache:
        if size_mb <= 0:
            return cls(None)
        max_bytes = int(size_mb * 1024 * 1024)
        if redis_url:
            return cls(RedisResultStore(redis_url, max_bytes))
        return cls(DiskResultStore(Path(data_dir) / "cache" / "results", max_bytes))

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def key_for(self, route: str, request: Any, options: Mapping[str, Any]) -> str | None:
        return cache_key(route, request, options) if self.enabled else None

    def lookup(self, key: str | None) -> dict[str, Any] | None:
        """The stored response, or None; a store that fails is logged and treated as a miss."""
        if key is None or self.store is None:
            return None
        try:
            data = self.store.get(key)
        except (OSError, StoreError) as exc:
            log.warning("result cache read failed (%s); generating instead", exc)
            return None
        return json.loads(data) if data is not None else None

    def store_response(self, key: str | None, response: dict[str, Any]) -> None:
        if key is None or self.store is None:
            return
        try:
            self.store.put(key, json.dumps(response).encode("utf-8"))
        except (OSError, StoreError) as exc:
            log.warning("result cache write failed (%s); the response is still returned", exc)

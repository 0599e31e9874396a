"""A private redis-server on a loopback port, for the tests of the Redis-backed stores.

REDIS_URL (CI's own server) wins when set; otherwise the `redis-server` binary is started on a
free 127.0.0.1 port without persistence, and stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

REDIS_MISSING = "redis-server is not installed here (CI installs the Debian package redis-server in .ci/run)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_ping(url: str, timeout: float = 10.0) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def redis_available() -> bool:
    return bool(os.environ.get("REDIS_URL")) or shutil.which("redis-server") is not None


@contextmanager
def running_redis_server() -> Iterator[str]:
    """Yields the URL of a Redis that answers; callers skip first when `redis_available()` is False."""
    if os.environ.get("REDIS_URL"):
        wait_for_ping(os.environ["REDIS_URL"])
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(REDIS_MISSING)
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_ping(url)
        yield url
    finally:
        process.terminate()
        process.wait(10)

"""Fixtures for the serving tests: a real redis-server, a keys file, an engine spy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from tests.factories import settings_for_tests

REDIS_MISSING = "redis-server is not installed here (CI installs the Debian package redis-server in .ci/run)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_ping(url: str, timeout: float = 10.0) -> None:
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


@pytest.fixture(scope="session")
def redis_server_url():
    """REDIS_URL when CI exported one (its own redis-server), else a private redis-server on a
    free port for this session; skipped only when no redis-server binary exists."""
    if os.environ.get("REDIS_URL"):
        _wait_for_ping(os.environ["REDIS_URL"])
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(REDIS_MISSING)
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_ping(url)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture()
def redis_url(redis_server_url):
    """The session's Redis, emptied for this test."""
    import redis

    redis.Redis.from_url(redis_server_url).flushdb()
    return redis_server_url


class EngineSpy:
    """The real engine, counting txt2img/img2img calls (a hit of the result cache makes none)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.calls: list[str] = []
        self.prompts: list[str] = []  # first prompt of each job, in the order the device ran them

    def txt2img(self, job, *args, **kwargs):
        self.calls.append("txt2img")
        self.prompts.append(job.prompts[0])
        return self._engine.txt2img(job, *args, **kwargs)

    def img2img(self, job, *args, **kwargs):
        self.calls.append("img2img")
        self.prompts.append(job.prompts[0])
        return self._engine.img2img(job, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)


@pytest.fixture()
def spy_client(engine, tmp_path):
    """Factory: (client, spy) over a fresh app whose engine is a spy; kwargs are Settings overrides."""
    from fastapi.testclient import TestClient

    from webui_api.app import create_app

    opened = []

    def factory(**overrides):
        spy = EngineSpy(engine)
        client = TestClient(create_app(settings_for_tests(tmp_path, **overrides), engine=spy))
        client.__enter__()
        opened.append(client)
        return client, spy

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


KEYS_YAML = """
keys:
  - name: alice
    key: alice-secret-key
    tier: high
    rate_limit: "2/minute"
  - name: bob
    sha256: {bob_sha}
    tier: low
    groups: [generate, catalog]
  - name: scraper
    key: scraper-secret-key
    groups: [metrics]
"""


@pytest.fixture()
def keys_file(tmp_path):
    import hashlib

    path = tmp_path / "keys.yaml"
    path.write_text(KEYS_YAML.format(bob_sha=hashlib.sha256(b"bob-secret-key").hexdigest()))
    return path


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}

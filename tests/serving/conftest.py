"""Fixtures for the serving tests: a real redis-server, a keys file, an engine spy."""

from __future__ import annotations

import pytest

from tests.factories import settings_for_tests
from tests.redis_server import REDIS_MISSING, redis_available, running_redis_server


@pytest.fixture(scope="session")
def redis_server_url():
    """REDIS_URL when CI exported one (its own redis-server), else a private redis-server on a
    free port for this session; skipped only when no redis-server binary exists."""
    if not redis_available():
        pytest.skip(REDIS_MISSING)
    with running_redis_server() as url:
        yield url


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

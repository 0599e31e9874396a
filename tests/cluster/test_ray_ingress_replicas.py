"""`--ray-ingress-replicas 2 --redis-url ...`: two ingress replicas share their async tasks in Redis.

A task queued through one ingress replica is stored in Redis, runs exactly once (both replicas'
runners race for it; one claim wins) and is read, with its results, through the other replica.
Which replica answered is the X-Webui-Api-Replica header. One worker replica, a real
redis-server on loopback; marked slow (a cluster with two ingress replicas takes a minute to start here).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install '.[ray]')")
pytest.importorskip("redis", reason="the redis client is not installed")

import httpx
import ray

from tests.cluster.ray_cluster import board, serve_cluster
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint
from tests.redis_server import REDIS_MISSING, redis_available, running_redis_server
from webui_api.app import REPLICA_HEADER
from webui_api.task_store_redis import RedisTaskStore
from webui_api.tasks import DONE

pytestmark = pytest.mark.slow

TASK = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler"}
TIMEOUT = 120.0
TASKS = "/agent-scheduler/v1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ray_home: Path) -> Any:
    if not redis_available():
        pytest.skip(REDIS_MISSING)
    root = tmp_path_factory.mktemp("ray-ingress")
    sd = root / "data" / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    write_checkpoint(sd / "alpha.safetensors", build_networks("sd1", seed=1))
    with running_redis_server() as redis_url:
        with serve_cluster(root / "data", ray_home, workers=1, ingress_replicas=2, redis_url=redis_url,
                           skip_load_model_at_start=True) as (base, _settings):  # the one job loads it
            yield base, redis_url


def answers_by_replica(base: str, path: str, wanted: int = 2, tries: int = 60) -> dict[str, httpx.Response]:
    """GET `path` until `wanted` distinct ingress replicas answered it (Serve's proxy spreads requests)."""
    seen: dict[str, httpx.Response] = {}
    for _ in range(tries):
        response = httpx.get(f"{base}{path}", timeout=TIMEOUT)
        seen[response.headers[REPLICA_HEADER]] = response
        if len(seen) >= wanted:
            return seen
    raise AssertionError(f"{path} was answered by {sorted(seen)} only, in {tries} tries")


def wait_done(base: str, task_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if httpx.get(f"{base}{TASKS}/task/{task_id}", timeout=TIMEOUT).json()["data"]["status"] == DONE:
            return
        time.sleep(0.3)
    raise AssertionError(f"task {task_id} did not finish")


def test_a_task_queued_through_one_ingress_is_run_once_and_read_through_another(cluster: tuple[str, str]) -> None:
    base, redis_url = cluster
    jobs_before = len(ray.get(board().finished.remote()))
    queued = httpx.post(f"{base}{TASKS}/queue/txt2img", json=TASK, timeout=TIMEOUT)
    assert queued.status_code == 200, queued.text
    task_id = queued.json()["task_id"]
    accepted_by = queued.headers[REPLICA_HEADER]
    assert RedisTaskStore(redis_url).get(task_id) is not None, "the task is not in the shared Redis store"

    wait_done(base, task_id)
    statuses = answers_by_replica(base, f"{TASKS}/task/{task_id}")
    assert accepted_by in statuses  # and some other replica
    for response in statuses.values():
        assert response.json()["success"] is True and response.json()["data"]["status"] == DONE
    results = answers_by_replica(base, f"{TASKS}/task/{task_id}/results")
    images = {replica: [entry["image"] for entry in response.json()["data"]] for replica, response in results.items()}
    assert len(next(iter(images.values()))) == 1 and len({tuple(v) for v in images.values()}) == 1

    finished = ray.get(board().finished.remote())[jobs_before:]
    assert len(finished) == 1, f"the task ran {len(finished)} times on the worker replicas"

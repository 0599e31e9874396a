"""`--ray-ingress-replicas 2 --redis-url ...`: two ingress replicas act as one server.

A task queued through one ingress replica is stored in Redis, runs exactly once (both replicas'
runners race for it; one claim wins) and is read, with its results, through the other replica.
An /options change through one replica is read, and used by the next job, through the other
(the options document in Redis). A job running through one replica shows in /progress and is
interrupted through the other (the job board). Which replica answered is the X-Webui-Api-Replica
header. One worker replica, a real redis-server on loopback; marked slow (a cluster with two
ingress replicas takes a minute to start here).
"""

from __future__ import annotations

import json
import threading
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


def test_an_options_change_through_one_ingress_is_read_and_used_through_the_other(cluster: tuple[str, str]) -> None:
    base, _redis_url = cluster
    posted = httpx.post(f"{base}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}, timeout=TIMEOUT)
    assert posted.status_code == 200, posted.text
    try:
        answers = answers_by_replica(base, "/sdapi/v1/options")
        assert posted.headers[REPLICA_HEADER] in answers
        assert {replica: r.json()["CLIP_stop_at_last_layers"] for replica, r in answers.items()} == dict.fromkeys(
            answers, 2)
        infotexts: dict[str, str] = {}
        for _ in range(20):  # the next job through either replica runs with clip skip 2
            made = httpx.post(f"{base}/sdapi/v1/txt2img", json={**TASK, "steps": 2}, timeout=TIMEOUT)
            assert made.status_code == 200, made.text
            infotexts[made.headers[REPLICA_HEADER]] = json.loads(made.json()["info"])["infotexts"][0]
            if len(infotexts) == 2:
                break
        assert len(infotexts) == 2, f"txt2img was answered by {sorted(infotexts)} only"
        assert all("Clip skip: 2" in text for text in infotexts.values()), infotexts
    finally:
        httpx.post(f"{base}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}, timeout=TIMEOUT)


def busy_ingress() -> str | None:
    """The ingress replica whose job runs longest, as the board tells every replica."""
    current = ray.get(board().ingress_sync.remote("test-probe", None))["current"]
    return None if current is None else str(current["replica"])


def wait_for(condition: Any, what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def progress_from_another_replica(base: str, running_on: str, job_count: int) -> dict[str, Any] | None:
    response = httpx.get(f"{base}/sdapi/v1/progress", timeout=TIMEOUT)
    body = response.json()
    shows_job = body["state"]["job_count"] == job_count and body["progress"] > 0
    return body if response.headers[REPLICA_HEADER] != running_on and shows_job else None


def post_in_background(url: str, body: dict[str, Any]) -> tuple[threading.Thread, list[httpx.Response]]:
    answer: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answer.append(httpx.post(url, json=body, timeout=TIMEOUT)))
    thread.start()
    return thread, answer


def interrupt_across_replicas(base: str, n_iter: int) -> bool:
    """One round: a long job, its /progress and an /interrupt through Serve's proxy. False when
    the /interrupt happened to reach the job's own replica (the round proves nothing)."""
    jobs_before = len(ray.get(board().finished.remote()))
    thread, answer = post_in_background(f"{base}/sdapi/v1/txt2img", {**TASK, "steps": 10, "n_iter": n_iter, "seed": 7})
    running_on = wait_for(busy_ingress, what="the job to start")
    shown = wait_for(lambda: progress_from_another_replica(base, running_on, n_iter),
                     what="another replica's /progress to show the job", timeout=30)
    assert set(shown) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    interrupt = httpx.post(f"{base}/sdapi/v1/interrupt", timeout=TIMEOUT)
    thread.join(TIMEOUT)
    assert interrupt.status_code == 200 and answer and answer[0].status_code == 200
    assert answer[0].headers[REPLICA_HEADER] == running_on
    if interrupt.headers[REPLICA_HEADER] == running_on:
        return False
    assert len(answer[0].json()["images"]) < n_iter, "the job was not interrupted"
    finished = ray.get(board().finished.remote())[jobs_before:]
    assert [job["interrupted"] for job in finished] == [True]
    return True


def test_a_job_running_through_one_ingress_is_shown_and_interrupted_through_the_other(
    cluster: tuple[str, str],
) -> None:
    """Serve's proxy picks the replica; a round whose /interrupt reached the job's own replica
    is run again (the proxy prefers the idle replica, so that is rare)."""
    base, _redis_url = cluster
    assert any(interrupt_across_replicas(base, n_iter=30) for _round in range(5)), (
        "every /interrupt reached the replica running the job; nothing was shown across replicas")

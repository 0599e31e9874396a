"""`--ray` on a local CPU Ray cluster with two worker replicas and two tiny checkpoints.

One cluster for the whole module (a Ray start costs tens of seconds on a small CPU). The fast
tests (parallel replicas, model-aware routing) run in CI; the failure tests (a replica killed
mid-job, an ingress restarted with queued tasks) and the interrupt test are marked slow.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install '.[ray]')")

import httpx
import ray

from tests.cluster.ray_cluster import board, serve_cluster
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint

LONG = {"prompt": "a cat", "steps": 60, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
SHORT = {**LONG, "steps": 3}
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ray_home: Path) -> Any:
    root = tmp_path_factory.mktemp("ray")
    sd = root / "data" / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    write_checkpoint(sd / "alpha.safetensors", build_networks("sd1", seed=1))
    write_checkpoint(sd / "beta.safetensors", build_networks("sd1", seed=2))
    with serve_cluster(root / "data", ray_home, workers=2) as (base, _settings):
        yield base


def txt2img(base: str, **fields: Any) -> httpx.Response:
    return httpx.post(f"{base}/sdapi/v1/txt2img", json={**SHORT, **fields}, timeout=TIMEOUT)


def finished_jobs() -> list[dict[str, Any]]:
    return ray.get(board().finished.remote())


def new_jobs(before: int) -> list[dict[str, Any]]:
    return finished_jobs()[before:]


def in_parallel(*calls: Any) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    return results


def warm_both_replicas(base: str) -> None:
    """Until both replicas ran a job (and hold the default model), send pairs of short jobs."""
    for _ in range(5):
        in_parallel(lambda: txt2img(base), lambda: txt2img(base))
        if len({job["replica"] for job in finished_jobs()}) >= 2:
            return
    raise AssertionError("the second replica never got a job")


def test_two_replicas_run_two_jobs_at_once(cluster: str) -> None:
    warm_both_replicas(cluster)
    before = len(finished_jobs())
    responses = in_parallel(lambda: txt2img(cluster, **LONG), lambda: txt2img(cluster, **{**LONG, "seed": 4}))
    assert [r.status_code for r in responses] == [200, 200]
    jobs = new_jobs(before)
    assert len(jobs) == 2 and jobs[0]["replica"] != jobs[1]["replica"]
    first, second = sorted(jobs, key=lambda job: job["started"])
    assert second["started"] < first["ended"], "the two jobs did not overlap in time"


def test_requests_land_on_the_replica_holding_their_checkpoint(cluster: str) -> None:
    """Serve's multiplexing: once some replica ran a checkpoint, its jobs go to such a replica."""
    for name in ("beta", "alpha", "beta", "alpha", "beta", "alpha"):
        key = f"{name}.safetensors|Automatic"
        history = finished_jobs()
        holders = {job["replica"] for job in history if job["model_key"] == key}
        response = txt2img(cluster, override_settings={"sd_model_checkpoint": name})
        assert response.status_code == 200
        assert f"Model: {name}" in response.json()["info"]
        (job,) = new_jobs(len(history))
        assert job["model_key"] == key
        if holders:
            assert job["replica"] in holders, f"{name} went to a replica that did not hold it"


def test_options_model_change_reaches_the_replicas(cluster: str) -> None:
    assert (
        httpx.post(f"{cluster}/sdapi/v1/options", json={"sd_model_checkpoint": "beta"}, timeout=TIMEOUT).status_code
        == 200
    )
    try:
        before = len(finished_jobs())
        response = txt2img(cluster)
        assert response.status_code == 200 and "Model: beta" in response.json()["info"]
        assert new_jobs(before)[0]["model_key"] == "beta.safetensors|Automatic"
    finally:
        httpx.post(f"{cluster}/sdapi/v1/options", json={"sd_model_checkpoint": "alpha"}, timeout=TIMEOUT)


def queue_task(base: str, **fields: Any) -> str:
    response = httpx.post(f"{base}/agent-scheduler/v1/queue/txt2img", json={**LONG, **fields}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def task_status(base: str, task_id: str) -> str:
    response = httpx.get(f"{base}/agent-scheduler/v1/task/{task_id}", timeout=TIMEOUT)
    assert response.status_code == 200
    return response.json()["data"]["status"]


def wait_for(predicate: Any, timeout: float = TIMEOUT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def running_jobs() -> dict[str, dict[str, Any]]:
    return ray.get(board().running.remote())


@pytest.mark.slow
def test_interrupt_reaches_the_replica_running_that_job(cluster: str) -> None:
    before = len(finished_jobs())
    sync: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: sync.append(txt2img(cluster, **{**LONG, "steps": 150})))
    thread.start()
    wait_for(lambda: len(running_jobs()) == 1, what="the sync job to start")
    task_id = queue_task(cluster, steps=150, seed=9)
    wait_for(lambda: len(running_jobs()) == 2, what="the task to start beside it")
    assert httpx.delete(f"{cluster}/agent-scheduler/v1/task/{task_id}", timeout=TIMEOUT).json()["success"]
    wait_for(lambda: task_status(cluster, task_id) == "interrupted", what="the task to be interrupted")
    thread.join(TIMEOUT)
    assert sync[0].status_code == 200
    jobs = new_jobs(before)
    interrupted = [job for job in jobs if job["interrupted"]]
    untouched = [job for job in jobs if not job["interrupted"]]
    assert len(interrupted) == 1 and len(untouched) == 1
    assert interrupted[0]["replica"] != untouched[0]["replica"]


def kill_actor(name: str) -> None:
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


@pytest.mark.slow
def test_a_replica_killed_mid_job_loses_no_task_and_the_next_request_succeeds(cluster: str) -> None:
    task_id = queue_task(cluster, steps=200, seed=11)
    job = wait_for(lambda: next(iter(running_jobs().values()), None), what="the task to start on a replica")
    kill_actor(job["actor_name"])
    wait_for(lambda: task_status(cluster, task_id) == "done", what="the task to finish on another replica")
    assert txt2img(cluster).status_code == 200


@pytest.mark.slow
def test_an_ingress_restart_keeps_queued_tasks(cluster: str) -> None:
    task_ids = [queue_task(cluster, steps=40, seed=20 + n) for n in range(3)]
    wait_for(lambda: running_jobs(), what="the first task to start")
    (ingress,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#ingress#" in a["name"]]
    kill_actor(ingress)
    from tests.cluster.ray_cluster import wait_ready

    time.sleep(1.0)
    wait_ready(cluster)
    for task_id in task_ids:
        wait_for(
            lambda task_id=task_id: task_status(cluster, task_id) == "done", what=f"task {task_id} after the restart"
        )


def test_extras_run_on_a_worker_replica(cluster: str) -> None:
    """The device's owner upscales: the extras job shows on the board (no checkpoint key)."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 40, 10)).save(buffer, "PNG")
    before = len(finished_jobs())
    response = httpx.post(f"{cluster}/sdapi/v1/extra-single-image", timeout=TIMEOUT, json={
        "image": base64.b64encode(buffer.getvalue()).decode(), "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))).size == (48, 32)
    (job,) = new_jobs(before)
    assert job["model_key"] == "" and not job["interrupted"]


def test_progress_shows_a_remote_job(cluster: str) -> None:
    seen: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: txt2img(cluster, **{**LONG, "steps": 120}))
    thread.start()
    try:
        def progressed() -> bool:
            body = httpx.get(f"{cluster}/sdapi/v1/progress", timeout=TIMEOUT).json()
            seen.append(body)
            return body["state"]["sampling_step"] > 0 and body["state"]["job_count"] > 0

        wait_for(progressed, what="/progress to show the remote job's steps")
    finally:
        thread.join(TIMEOUT)
    assert seen[-1]["progress"] > 0

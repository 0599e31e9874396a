"""/progress, /interrupt and /skip while a generation runs."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

from PIL import Image

from tests.api.payloads import webuiapi_txt2img

LONG_JOB = dict(steps=400, width=64, height=64, seed=5)


def start_in_background(client, payload):
    holder = {}

    def run():
        holder["response"] = client.post("/sdapi/v1/txt2img", json=payload)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, holder


def wait_for(client, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = client.get("/sdapi/v1/progress").json()
        if predicate(snapshot):
            return snapshot
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s; last progress: {snapshot}")


def test_idle_progress_shape(client):
    body = client.get("/sdapi/v1/progress").json()
    assert body["progress"] == 0 and body["eta_relative"] == 0
    assert body["current_image"] is None and body["textinfo"] is None
    assert set(body["state"]) == {"skipped", "interrupted", "stopping_generation", "job", "job_count",
                                  "job_timestamp", "job_no", "sampling_step", "sampling_steps"}
    assert body["state"]["job"] == "" and body["state"]["job_count"] == 0


def test_progress_during_a_run_then_interrupt_returns_partial_images(client):
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 5})
    thread, holder = start_in_background(client, webuiapi_txt2img(**LONG_JOB))
    running = wait_for(client, lambda s: s["state"]["sampling_step"] >= 10 and s["current_image"])
    assert running["state"]["job"] == "scripts_txt2img" and running["state"]["job_count"] == 1
    assert running["state"]["sampling_steps"] == 400
    assert 0.01 < running["progress"] < 1 and running["eta_relative"] > 0
    Image.open(io.BytesIO(base64.b64decode(running["current_image"]))).load()
    assert client.get("/sdapi/v1/progress?skip_current_image=true").json()["current_image"] is None
    assert client.get("/sdapi/v1/options").status_code == 200  # answered while generating
    assert client.post("/sdapi/v1/interrupt").json() == {}
    thread.join(60)
    response = holder["response"]
    assert response.status_code == 200
    assert len(response.json()["images"]) == 1
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_skip_ends_the_current_batch_and_goes_on(client):
    payload = webuiapi_txt2img(**{**LONG_JOB, "n_iter": 2})
    thread, holder = start_in_background(client, payload)
    wait_for(client, lambda s: s["state"]["sampling_step"] >= 3)
    assert client.post("/sdapi/v1/skip").json() is None
    wait_for(client, lambda s: s["state"]["job_no"] >= 1 and s["state"]["job"] == "Batch 2 out of 2")
    client.post("/sdapi/v1/interrupt")
    thread.join(60)
    body = holder["response"].json()
    assert len(body["images"]) == 2
    assert json.loads(body["info"])["all_seeds"] == [5, 6]


def test_requests_queue_one_after_another(client):
    payloads = [webuiapi_txt2img(seed=s, steps=3) for s in (1, 2, 3)]
    results = {}

    def run(p):
        results[p["seed"]] = client.post("/sdapi/v1/txt2img", json=p)

    threads = [threading.Thread(target=run, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r.status_code == 200 for r in results.values())
    assert {json.loads(r.json()["info"])["seed"] for r in results.values()} == {1, 2, 3}

"""/health, /ready, /metrics, the audit log and the shutdown intake guard."""

from __future__ import annotations

import base64
import hashlib
import json

from tests.api.payloads import webuiapi_txt2img
from tests.serving.conftest import bearer

FIXED = webuiapi_txt2img(steps=2, width=64, height=64, seed=11, batch_size=2)


def metric(text: str, name: str) -> float:
    """The value of one sample line `name value` (name with its labels, exactly)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "model_loaded": True, "worker_alive": True, "shutting_down": False}


def test_not_ready_and_no_intake_while_draining(client):
    client.app.state.runtime.serving.lifecycle.begin_drain()
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["shutting_down"] is True
    refused = client.post("/sdapi/v1/txt2img", json=FIXED)
    assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
    assert refused.headers["Retry-After"] == "5"
    queued = client.post("/agent-scheduler/v1/queue/txt2img", json=FIXED)
    assert queued.status_code == 503
    assert client.get("/sdapi/v1/samplers").status_code == 200  # reads still work
    assert client.get("/health").status_code == 200


def test_metrics_after_generations_errors_and_cache(make_client):
    client = make_client(result_cache_mb=8)
    client.post("/sdapi/v1/txt2img", json=FIXED)
    client.post("/sdapi/v1/txt2img", json=FIXED)  # a cache hit
    bad = client.post("/sdapi/v1/txt2img", json={**FIXED, "enable_hr": True, "hr_upscaler": "No Such Upscaler"})
    assert bad.status_code == 400, bad.text
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "webui_api_queue_depth") == 0
    assert metric(text, 'webui_api_queue_wait_seconds_count{route="txt2img"}') == 1
    assert metric(text, 'webui_api_run_seconds_count{route="txt2img"}') == 1
    assert metric(text, 'webui_api_steps_per_second_count{route="txt2img"}') == 1
    assert metric(text, 'webui_api_result_cache_total{result="hit"}') == 1
    assert metric(text, 'webui_api_result_cache_total{result="miss"}') == 2  # the bad upscaler is looked up first
    assert metric(text, 'webui_api_generations_total{route="txt2img"}') == 2
    errors = [line for line in text.splitlines() if line.startswith("webui_api_errors_total{")]
    assert len(errors) == 1 and errors[0].endswith(" 1.0")
    assert "webui_api_batch_size_bucket" in text and "webui_api_tasks_pending" in text


def test_batch_size_is_observable_by_the_batching_code(client):
    metrics = client.app.state.runtime.metrics
    metrics.observe_batch(3)
    assert metric(client.get("/metrics").text, "webui_api_batch_size_count") == 1


def test_audit_log_line_per_generation(make_client, keys_file, tmp_path):
    audit = tmp_path / "audit" / "audit.jsonl"
    client = make_client(audit_log=audit, api_keys_file=keys_file, result_cache_mb=8)
    answer = client.post("/sdapi/v1/txt2img", json=FIXED, headers=bearer("alice-secret-key")).json()
    client.post("/sdapi/v1/txt2img", json=FIXED, headers=bearer("alice-secret-key"))  # the cache answers
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["caller"] == "alice" and first["route"] == "txt2img" and first["status"] == "ok"
    assert first["seeds"] == [11, 12] and first["params"]["prompt"] == FIXED["prompt"]
    assert first["images_sha256"] == [hashlib.sha256(base64.b64decode(b)).hexdigest() for b in answer["images"]]
    assert first["timings"]["run"] > 0 and first["timings"]["wait"] >= 0 and first["cache"] == "miss"
    assert second["cache"] == "hit" and second["images_sha256"] == first["images_sha256"]
    assert "alice-secret-key" not in audit.read_text()


def test_audit_log_leaves_out_images_and_callback_urls(make_client, tmp_path):
    audit = tmp_path / "audit.jsonl"
    client = make_client(audit_log=audit)
    image = client.post("/sdapi/v1/txt2img", json={**FIXED, "batch_size": 1}).json()["images"][0]
    client.post("/sdapi/v1/img2img", json={**FIXED, "batch_size": 1, "init_images": [image], "denoising_strength": 0.5})
    entry = json.loads(audit.read_text().splitlines()[-1])
    assert entry["route"] == "img2img" and image not in audit.read_text()
    assert entry["params"]["init_images"][0].startswith("<image sha256:")
    assert entry["caller"] == "anonymous"


def test_audit_entry_scrubs_secrets_and_long_strings():
    from webui_api.serving.audit import scrub

    scrubbed = scrub(
        {"callback_url": "https://x/?token=s", "alwayson_scripts": {"cn": {"args": [{"image": "A" * 600}]}}}
    )
    assert "callback_url" not in scrubbed
    assert scrubbed["alwayson_scripts"]["cn"]["args"][0]["image"].startswith("<600 chars sha256:")


def test_a_stop_signal_starts_draining_before_uvicorn_stops(client):
    import signal

    import uvicorn

    from webui_api.serve import _draining_server_class, begin_drain

    calls = []
    server = _draining_server_class(uvicorn.Server)(uvicorn.Config(client.app), on_exit=lambda: calls.append("drain"))
    server.handle_exit(signal.SIGTERM, None)
    assert calls == ["drain"] and server.should_exit
    begin_drain(client.app)
    assert client.get("/ready").status_code == 503

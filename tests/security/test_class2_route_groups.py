"""Class 2: every route carries identity, group check, priority, rate limit, audit and metrics
by construction: one classification table read by the dependency every API router has, and
these tests generated from the app's own route table."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.routing import APIRoute

from tests.controlnet.helpers import b64_png, pattern_image, tiny_controlnet, write_original
from tests.security.route_table import app_routes
from tests.serving.conftest import bearer
from webui_api.serving.groups import GENERATE, OPEN_ROUTES, PAGE_ROUTES, classify, is_classified

KEYS = """
keys:
  - {name: painter, key: painter-secret, rate_limit: "2/minute"}
  - {name: browser, key: browser-secret, groups: [catalog]}
"""
WORK_ROUTES = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images",
               "/v1/controlnet", "/controlnet/detect")
# POST routes that change state but queue no generation work (no rate limit)
NON_WORK_POSTS = {"/sdapi/v1/options", "/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/png-info",
                  "/agent-scheduler/v1/delete/{task_id}", "/internal/progress"}


def _all_routes(engine, tmp_path):
    from tests.factories import settings_for_tests
    from webui_api.app import create_app

    app = create_app(settings_for_tests(tmp_path, api_server_stop=True), engine=engine)
    routes = list(app_routes(app))
    assert len(routes) > 50  # the whole A1111 surface, not just FastAPI's own docs routes
    return routes


def test_every_route_of_the_app_is_classified(engine, tmp_path):
    unclassified = sorted({path for path, _, _ in _all_routes(engine, tmp_path) if not is_classified(path)})
    assert unclassified == [], "add these routes to webui_api/serving/groups.py ROUTES"


def test_the_app_reports_an_unclassified_route(engine, tmp_path):
    from fastapi import APIRouter

    from tests.factories import settings_for_tests
    from webui_api.app import create_app
    from webui_api.auth import route_paths, unclassified_routes

    app = create_app(settings_for_tests(tmp_path), engine=engine)
    assert unclassified_routes(app) == [] and "/sdapi/v1/txt2img" in route_paths(app)
    extra = APIRouter()
    extra.add_api_route("/sdapi/v1/new-work", lambda: None, methods=["POST"])
    app.include_router(extra)
    assert unclassified_routes(app) == ["/sdapi/v1/new-work"]
    assert classify("/sdapi/v1/new-work").group == "admin" and classify("/sdapi/v1/new-work").submission


def test_every_api_route_has_the_auth_dependency(engine, tmp_path):
    from webui_api.auth import require_api_auth

    for path, _, route in _all_routes(engine, tmp_path):
        if isinstance(route, APIRoute) and path not in OPEN_ROUTES and path not in PAGE_ROUTES:
            calls = {dependency.call for dependency in route.dependant.dependencies}
            assert require_api_auth in calls, path


def test_work_routes_are_rate_limited_generation(engine, tmp_path):
    for path in WORK_ROUTES:
        assert classify(path).group == GENERATE and classify(path).submission, path
    for path, methods, _ in _all_routes(engine, tmp_path):
        if "POST" in methods and not classify(path).submission:
            assert path in NON_WORK_POSTS or classify(path).group == "admin", path


@pytest.fixture()
def keyed(make_client, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS)
    audit = tmp_path / "logs" / "audit.jsonl"

    def factory(**overrides):
        return make_client(api_keys_file=keys, audit_log=audit, **overrides), audit

    return factory


def _detect_payload():
    return {"controlnet_module": "canny", "controlnet_input_images": [b64_png(pattern_image())],
            "controlnet_processor_res": 64}


def _endpoint_payload():
    return {"inputs": "a house", "controlnet_type": "canny_edge", "image": b64_png(pattern_image()),
            "num_inference_steps": 2, "height": 64, "width": 64, "seed": 5, "preprocess": False}


@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/v1/controlnet", _endpoint_payload()),
    ("post", "/controlnet/detect", _detect_payload()),
    ("post", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1, "width": 64, "height": 64}),
    ("post", "/sdapi/v1/extra-single-image", {"image": b64_png(pattern_image()), "upscaling_resize": 1}),
])
def test_a_catalog_key_cannot_do_work(keyed, method, path, body):
    client, _ = keyed()
    response = getattr(client, method)(path, json=body, headers=bearer("browser-secret"))
    assert response.status_code == 403, response.text
    assert client.get("/controlnet/model_list", headers=bearer("browser-secret")).status_code == 200


def test_one_rate_limit_counts_every_work_route(keyed):
    client, audit = keyed()
    first = client.post("/controlnet/detect", json=_detect_payload(), headers=bearer("painter-secret"))
    assert first.status_code == 200
    second = client.post("/v1/controlnet", json=_endpoint_payload(), headers=bearer("painter-secret"))
    assert second.status_code == 404  # no ControlNet model here: refused, but counted
    third = client.post("/controlnet/detect", json=_detect_payload(), headers=bearer("painter-secret"))
    assert third.status_code == 429
    fourth = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1}, headers=bearer("painter-secret"))
    assert fourth.status_code == 429
    assert client.get("/sdapi/v1/progress", headers=bearer("painter-secret")).status_code == 200  # polling is free
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(line["caller"], line["route"], line["http_status"]) for line in lines] == [
        ("painter", "/controlnet/detect", 200), ("painter", "/v1/controlnet", 404),
        ("painter", "/controlnet/detect", 429), ("painter", "/sdapi/v1/txt2img", 429),
    ]
    metrics = client.get("/metrics", headers=bearer("painter-secret")).text
    assert 'webui_api_requests_total{group="generate",status="429"} 2.0' in metrics


def test_v1_controlnet_generation_is_audited_as_its_caller(keyed, tmp_path):
    write_original(tiny_controlnet(1), tmp_path / "models" / "ControlNet" / "tiny_canny.safetensors",
                   prefix="control_model.")
    client, audit = keyed(own_engine=True)
    response = client.post("/v1/controlnet", json=_endpoint_payload(), headers=bearer("painter-secret"))
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["caller"] == "painter" and lines[0]["route"] == "txt2img"
    assert lines[0]["images_sha256"] and lines[0]["params"]["prompt"] == "a house"
    shutil.rmtree(tmp_path / "models")


def test_work_runs_at_the_callers_tier_on_every_work_route(make_client, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {name: slow, key: slow-secret, tier: low}\n")
    client = make_client(api_keys_file=keys)
    scheduler = client.app.state.runtime.scheduler
    seen: list[int] = []
    original = scheduler.run

    async def spying_run(item, priority=10, **kwargs):
        seen.append(priority)
        return await original(item, priority, **kwargs)

    scheduler.run = spying_run
    headers = bearer("slow-secret")
    assert client.post("/sdapi/v1/extra-single-image", headers=headers,
                       json={"image": b64_png(pattern_image()), "upscaling_resize": 1}).status_code == 200
    assert client.post("/sdapi/v1/txt2img", headers=headers,
                       json={"prompt": "x", "steps": 1, "width": 64, "height": 64}).status_code == 200
    assert seen == [20, 20]


def test_refused_submissions_are_audited_with_their_caller(keyed):
    client, audit = keyed()
    assert client.post("/sdapi/v1/txt2img", json={"steps": "many"}, headers=bearer("painter-secret")).status_code == 422
    assert client.post("/v1/controlnet", json=_endpoint_payload(), headers=bearer("browser-secret")).status_code == 403
    assert client.get("/sdapi/v1/samplers", headers=bearer("browser-secret")).status_code == 200  # reads: not audited
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(line["caller"], line["route"], line["http_status"]) for line in lines] == [
        ("painter", "/sdapi/v1/txt2img", 422), ("browser", "/v1/controlnet", 403)]

"""The generation layer's unit of work: one engine call per request, which hands back the model
it ran on, so nothing loads a model just to learn its name; scripts and async tasks take the
same path."""

from __future__ import annotations

import json
import time

from tests.api.payloads import webuiapi_txt2img
from tests.api.test_img2img import gradient, png_b64

SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 7}


def count_loads(spy) -> list[str | None]:
    """Record every engine.load the app makes from now on (the engine's own internal loads are not
    seen: they do not go through the spy)."""
    loads: list[str | None] = []
    real = spy._engine.load

    def load(title=None):
        loads.append(title)
        return real(title)

    spy.load = load
    return loads


def test_txt2img_makes_one_engine_call_and_no_load_of_its_own(spy_client, engine):
    client, spy = spy_client(skip_load_model_at_start=True)
    loads = count_loads(spy)
    response = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(**SMALL))
    assert response.status_code == 200
    assert spy.calls == ["txt2img"] and loads == []
    info = json.loads(response.json()["info"])
    model = engine.loaded.info
    assert info["sd_model_name"] == model.model_name
    assert f"Model: {model.model_name}" in info["infotexts"][0]


def test_img2img_makes_one_engine_call_and_no_load_of_its_own(spy_client, engine):
    client, spy = spy_client(skip_load_model_at_start=True)
    loads = count_loads(spy)
    body = {**webuiapi_txt2img(**SMALL), "init_images": [png_b64(gradient(64, 64))], "denoising_strength": 0.5}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    assert spy.calls == ["img2img"] and loads == []
    assert json.loads(response.json()["info"])["sd_model_name"] == engine.loaded.info.model_name


def test_a_script_loads_no_model_of_its_own(spy_client):
    client, spy = spy_client(skip_load_model_at_start=True)
    loads = count_loads(spy)
    body = {**webuiapi_txt2img(**SMALL), "script_name": "prompts from file or textbox",
            "script_args": [False, False, "start", "a cat\na dog"]}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert [prompt.split(" ")[1] for prompt in spy.prompts] == ["cat", "dog"] and loads == []


def test_an_async_task_answers_what_the_route_answers(spy_client):
    client, spy = spy_client(skip_load_model_at_start=True)
    body = webuiapi_txt2img(**SMALL)
    direct = client.post("/sdapi/v1/txt2img", json=body).json()
    task_id = client.post("/agent-scheduler/v1/queue/txt2img", json=body).json()["task_id"]
    deadline = time.monotonic() + 60
    while client.get(f"/agent-scheduler/v1/task/{task_id}").json()["data"]["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    results = client.get(f"/agent-scheduler/v1/results/{task_id}").json()
    assert results["success"] is True
    assert [entry["image"].split(",", 1)[1] for entry in results["data"]] == direct["images"]
    assert [entry["infotext"] for entry in results["data"]] == json.loads(direct["info"])["infotexts"]
    assert spy.calls == ["txt2img", "txt2img"]

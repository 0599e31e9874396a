"""The extension's routes and the endpoint payload, through the app."""

from __future__ import annotations

import base64
import io
import shutil

import pytest
from PIL import Image

from .helpers import b64_png, pattern_image


@pytest.fixture()
def cn_client(make_client, tmp_path, controlnet_dir):
    """An app whose own engine scans tmp_path/models/ControlNet (a copy of the test folder)."""
    shutil.copytree(controlnet_dir, tmp_path / "models" / "ControlNet")
    return make_client(own_engine=True)


def test_version_settings_and_model_list(cn_client):
    assert cn_client.get("/controlnet/version").json() == {"version": 3}
    assert cn_client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    models = cn_client.get("/controlnet/model_list", params={"update": "true"}).json()["model_list"]
    assert [m.split(" [")[0] for m in models] == ["tiny_canny", "tiny_canny_diffusers", "tiny_depth"]
    assert all(m.endswith("]") and len(m.split(" [")[1]) == 9 for m in models)
    assert cn_client.get("/controlnet/model_list", params={"update": "false"}).json()["model_list"] == models


def test_control_types_shape(cn_client):
    types = cn_client.get("/controlnet/control_types").json()["control_types"]
    assert list(types)[0] == "All" and {"Canny", "Depth", "OpenPose", "Segmentation"} <= set(types)
    for entry in types.values():
        assert set(entry) == {"module_list", "model_list", "default_option", "default_model"}
        assert entry["module_list"][0] == "none" and entry["model_list"][0] == "None"
    assert [m.split(" [")[0] for m in types["Canny"]["model_list"][1:]] == ["tiny_canny", "tiny_canny_diffusers"]
    assert types["Canny"]["default_model"].startswith("tiny_canny [")
    assert types["OpenPose"]["model_list"] == ["None"] and types["OpenPose"]["default_model"] == "None"


def test_txt2img_with_a_unit_returns_the_image_then_the_detected_map(cn_client):
    unit = {
        "input_image": b64_png(pattern_image()),
        "model": "tiny_canny",
        "resize_mode": "Just Resize",
        "control_mode": 0,
    }
    payload = {
        "prompt": "a cat",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 1,
        "alwayson_scripts": {"ControlNet": {"args": [unit]}},
    }
    response = cn_client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2
    assert '"ControlNet 0": "Module: none, Model: tiny_canny [' in body["info"]
    empty = cn_client.post("/sdapi/v1/txt2img", json={**payload, "alwayson_scripts": {"ControlNet": {"args": []}}})
    assert empty.status_code == 200 and len(empty.json()["images"]) == 1


def test_img2img_unit_without_image_uses_the_init_image(cn_client):
    payload = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1, "denoising_strength": 0.5,
               "init_images": [b64_png(pattern_image(seed=4), data_url=True)],
               "alwayson_scripts": {"controlnet": {"args": [{"model": "tiny_depth"}]}}}
    response = cn_client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 2
    detected = Image.open(io.BytesIO(base64.b64decode(images[1])))
    assert detected.convert("RGB").tobytes() == pattern_image(seed=4).tobytes()


@pytest.mark.parametrize(
    ("unit", "status", "words"),
    [({"image": "%%%", "model": "tiny_canny"}, 400, "Invalid encoded image"),
     ({"image": "IMAGE", "model": "no_such_model"}, 404, "no_such_model"),
     ({"image": "IMAGE", "model": "tiny_canny", "module": "no_such_module"}, 422, "no_such_module"),
     ({"model": "tiny_canny"}, 400, "no input image"),
     ({"image": "IMAGE", "model": "tiny_canny", "resize_mode": 7}, 422, "resize_mode")],
)
def test_bad_units_are_4xx(cn_client, unit, status, words):
    unit = {k: (b64_png(pattern_image()) if v == "IMAGE" else v) for k, v in unit.items()}
    payload = {
        "prompt": "x",
        "steps": 1,
        "width": 64,
        "height": 64,
        "alwayson_scripts": {"controlnet": {"args": [unit]}},
    }
    response = cn_client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == status, response.text
    assert words in response.text


def endpoint_payload(**fields):
    return {"inputs": "a house", "negative_prompt": "blurry", "controlnet_type": "canny_edge",
            "image": b64_png(pattern_image()), "num_inference_steps": 2, "guidance_scale": 7.0,
            "height": 64, "width": 64, "controlnet_conditioning_scale": 0.8, "seed": 5, "preprocess": False, **fields}


def test_endpoint_answers_png_bytes_for_accept_image_png(cn_client):
    response = cn_client.post("/v1/controlnet", json=endpoint_payload(), headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


def test_endpoint_answers_json_otherwise_and_same_image(cn_client):
    png = cn_client.post("/v1/controlnet", json=endpoint_payload(), headers={"Accept": "image/png"}).content
    response = cn_client.post("/v1/controlnet", json=endpoint_payload())
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert len(body["images"]) == 1 and base64.b64decode(body["images"][0]) == png
    assert body["parameters"]["controlnet_type"] == "canny_edge" and "image" not in body["parameters"]


def test_endpoint_refuses_unknown_types_missing_models_and_bad_sizes(cn_client):
    unknown = cn_client.post("/v1/controlnet", json=endpoint_payload(controlnet_type="telepathy"))
    assert unknown.status_code == 404 and "canny_edge" in unknown.text
    no_model = cn_client.post("/v1/controlnet", json=endpoint_payload(controlnet_type="pose"))
    assert no_model.status_code == 404 and "pose" in no_model.json()["detail"]
    bad_size = cn_client.post("/v1/controlnet", json=endpoint_payload(width=65))
    assert bad_size.status_code == 422 and "multiple of 8" in bad_size.text


def test_scripts_check_knows_controlnet(client):
    payload = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
    unknown = client.post("/sdapi/v1/txt2img", json={**payload, "alwayson_scripts": {"nope": {"args": [{"a": 1}]}}})
    assert unknown.status_code == 422 and "always on script nope not found" in unknown.text
    assert (
        client.post("/sdapi/v1/txt2img", json={**payload, "alwayson_scripts": {"ControlNet": {"args": []}}}).status_code
        == 200
    )

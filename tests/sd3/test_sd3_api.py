"""SD3 through the HTTP API as A1111/Forge clients call it: the single file listed and chosen in
override_settings, encoders found in models/text_encoder, txt2img (with hires fix) and img2img,
Forge's infotext back through png-info."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.sd3.files import tiny_parts, write_models


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture()
def sd3_client(make_client, tmp_path, parts):
    write_models(tmp_path / "models", parts, ())
    client = make_client(own_engine=True)
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    return client, next(t for t in titles if "sd3" in t)


def _image(body: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["images"][0])))


def _payload(title: str, **extra) -> dict:
    return {
        "prompt": "a (red:1.2) cat", "negative_prompt": "blurry", "steps": 2, "width": 32, "height": 32,
        "seed": 7, "sampler_name": "Euler", "scheduler": "Simple", "cfg_scale": 4,
        "override_settings": {"sd_model_checkpoint": title}, **extra,
    }


def test_txt2img_with_found_encoders_and_forge_infotext(sd3_client):
    client, title = sd3_client
    response = client.post("/sdapi/v1/txt2img", json=_payload(title))
    assert response.status_code == 200, response.text
    body = response.json()
    assert _image(body).size == (32, 32)
    info = body["info"]
    assert "Module 1: clip_g" in info and "Module 3: t5xxl" in info and "Schedule type: Simple" in info
    params = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()["parameters"]
    assert params["Module 2"] == "clip_l" and params["Sampler"] == "Euler"
    plain = client.post("/sdapi/v1/txt2img", json=_payload(title, prompt="a red cat")).json()
    assert plain["images"][0] != body["images"][0]  # emphasis reaches the encoders


def test_hires_fix_and_img2img(sd3_client):
    client, title = sd3_client
    hires = _payload(title, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", hr_second_pass_steps=2,
                     denoising_strength=0.5)
    response = client.post("/sdapi/v1/txt2img", json=hires)
    assert response.status_code == 200, response.text
    assert _image(response.json()).size == (48, 48)
    init = response.json()["images"][0]
    i2i = {**_payload(title), "init_images": [init], "denoising_strength": 0.6}
    response = client.post("/sdapi/v1/img2img", json=i2i)
    assert response.status_code == 200, response.text
    assert _image(response.json()).size == (32, 32) and "Denoising strength: 0.6" in response.json()["info"]


def test_ancestral_and_sde_samplers_answer_200_with_their_infotext(sd3_client):
    client, title = sd3_client
    for sampler in ("Euler a", "DPM++ 2M SDE"):
        response = client.post("/sdapi/v1/txt2img", json=_payload(title, sampler_name=sampler, eta=0.5))
        assert response.status_code == 200, response.text
        info = response.json()["info"]
        assert f"Sampler: {sampler}," in info and "Eta: 0.5" in info


def test_unsupported_schedule_type_is_a_400(sd3_client):
    client, title = sd3_client
    response = client.post("/sdapi/v1/txt2img", json=_payload(title, scheduler="Uniform"))
    assert response.status_code == 400 and "cannot run SD3 models" in response.json()["detail"]

"""A Forge client's calls replayed against the server: detect Forge through /options, list
the modules, choose them per job in override_settings, generate Flux with distilled_cfg_scale,
and read Forge's infotext back."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.flux.files import tiny_parts, write_models


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture()
def forge_client(make_client, tmp_path, parts):
    write_models(tmp_path / "models", parts, "bfl")
    return make_client(own_engine=True)


def test_forge_client_session(forge_client, tmp_path):
    client = forge_client
    # 1. detect Forge: the forge_* options are there
    options = client.get("/sdapi/v1/options").json()
    assert options["forge_additional_modules"] == [] and options["forge_preset"] == "sd"
    assert options["forge_unet_storage_dtype"] == "Automatic"
    # 2. list modules: Forge's item shape
    modules = client.get("/sdapi/v1/sd-modules").json()
    assert sorted(m["model_name"] for m in modules) == ["ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"]
    assert all(set(m) == {"model_name", "filename"} for m in modules)
    chosen = [m["filename"] for m in modules]
    # 3. the checkpoint is listed from the Flux subfolder
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    flux_title = next(t for t in titles if "flux-bfl" in t)
    # 4. generate with the modules chosen per job and Forge's Flux fields
    payload = {
        "prompt": "a (red:1.2) cat", "steps": 2, "width": 32, "height": 32, "seed": 7,
        "sampler_name": "Euler", "scheduler": "Simple", "cfg_scale": 1, "distilled_cfg_scale": 3.0,
        "override_settings": {"sd_model_checkpoint": flux_title, "forge_additional_modules": chosen,
                              "forge_preset": "flux"},
    }
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.size == (32, 32)
    infotext = body["info"]
    assert "Distilled CFG Scale: 3.0" in infotext
    assert "Module 1: ae" in infotext and "Module 3: t5xxl" in infotext
    assert "Schedule type: Simple" in infotext
    # 5. png-info round trip reads the Forge keys back
    params = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()["parameters"]
    assert params["Distilled CFG Scale"] == "3.0" or params["Distilled CFG Scale"] == 3.0
    # 6. a module name outside the folders is a 400 in A1111's error shape
    bad = {**payload, "override_settings": {"sd_model_checkpoint": flux_title, "forge_additional_modules": ["/etc/x"]}}
    refused = client.post("/sdapi/v1/txt2img", json=bad)
    assert refused.status_code == 400 and "unknown module" in refused.json()["detail"]


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_flux_hires_fix_with_hr_distilled_cfg(forge_client, upscaler):
    payload = {
        "prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 3, "sampler_name": "Euler",
        "scheduler": "Simple", "cfg_scale": 1, "distilled_cfg_scale": 3.5, "enable_hr": True, "hr_scale": 1.5,
        "hr_upscaler": upscaler, "hr_second_pass_steps": 2, "denoising_strength": 0.5, "hr_distilled_cfg": 5.0,
    }
    response = forge_client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.size == (48, 48)
    assert "Hires Distilled CFG Scale: 5.0" in body["info"] and f"Hires upscaler: {upscaler}" in body["info"]

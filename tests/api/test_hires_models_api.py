"""Hires fix and refiner fields over HTTP: model upscalers (ESRGAN files), hr_checkpoint_name,
refiner_checkpoint / refiner_switch_at, and the hires infotext keys they add."""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
from PIL import Image

from tests.api.payloads import a1111_img2img_payload, webuiapi_txt2img
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint
from tests.postprocess.upscaler_files import write_esrgan


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def infotext(response) -> str:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])["infotexts"][0]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Two tiny SD1 checkpoints and one ESRGAN file, written once."""
    models = tmp_path_factory.mktemp("hires-models") / "models"
    write_checkpoint(models / "Stable-diffusion" / "main.safetensors", build_networks("sd1", seed=1))
    write_checkpoint(models / "Stable-diffusion" / "second.safetensors", build_networks("sd1", seed=2))
    write_esrgan(models / "ESRGAN" / "2x-Tiny.pth", scale=2)
    return models


@pytest.fixture()
def models_client(make_client, tmp_path, model_files):
    """An engine scanning a copy of those folders in this test's data dir."""
    shutil.copytree(model_files, tmp_path / "models", dirs_exist_ok=True)
    return make_client(own_engine=True)


def txt2img(client, **fields):
    payload = webuiapi_txt2img(**{"steps": 2, "seed": 3, "sampler_name": "Euler", **fields})
    return client.post("/sdapi/v1/txt2img", json=payload)


def test_esrgan_file_as_hires_upscaler(models_client):
    response = txt2img(models_client, enable_hr=True, hr_upscaler="2x-Tiny", hr_scale=1.5, override_settings={
        "sd_model_checkpoint": "main"})
    text = infotext(response)
    assert decode(response.json()["images"][0]).size == (96, 96)
    assert "Hires upscaler: 2x-Tiny" in text


def test_unknown_upscaler_lists_the_known_ones(models_client):
    response = txt2img(models_client, enable_hr=True, hr_upscaler="4x-Missing")
    assert response.status_code == 400
    assert "could not find upscaler named '4x-Missing'" in response.text and "2x-Tiny" in response.text


def test_hires_checkpoint_and_refiner_infotext(models_client):
    response = txt2img(models_client, enable_hr=True, hr_scale=1.25, hr_checkpoint_name="second",
                       refiner_checkpoint="second.safetensors", refiner_switch_at=0.5,
                       override_settings={"sd_model_checkpoint": "main"})
    text = infotext(response)
    assert text.index("Denoising strength") < text.index("Hires checkpoint: second [")
    # the second pass already samples with the refiner's checkpoint: A1111 does not switch then
    assert "Refiner:" not in text


def test_refiner_switch_reaches_the_infotext(models_client):
    text = infotext(txt2img(models_client, refiner_checkpoint="second", refiner_switch_at=0.5,
                            override_settings={"sd_model_checkpoint": "main"}))
    assert "Refiner: second [" in text and "Refiner switch at: 0.5" in text


@pytest.mark.parametrize("name", [None, "", "None"])
def test_no_refiner_names(models_client, name):
    text = infotext(txt2img(models_client, refiner_checkpoint=name, refiner_switch_at=0.5))
    assert "Refiner" not in text


def test_unknown_refiner_is_a_404(client):
    response = txt2img(client, refiner_checkpoint="nope", refiner_switch_at=0.5)
    assert response.status_code == 404 and "Could not find checkpoint with name nope" in response.text


def test_img2img_refiner_over_http(models_client):
    image = Image.new("RGB", (64, 64), (30, 160, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    payload = a1111_img2img_payload(init_images=[base64.b64encode(buffer.getvalue()).decode()], seed=2,
                                    refiner_checkpoint="second", refiner_switch_at=0.4, sampler_index="Euler",
                                    override_settings={"sd_model_checkpoint": "main"})
    text = infotext(models_client.post("/sdapi/v1/img2img", json=payload))
    assert "Refiner: second [" in text and "Refiner switch at: 0.4" in text


def test_hires_schedule_type_when_the_second_pass_scheduler_differs(client):
    text = infotext(txt2img(client, enable_hr=True, hr_scale=1.25, hr_scheduler="Karras"))
    assert "Hires schedule type: Karras" in text
    text = infotext(txt2img(client, enable_hr=True, hr_scale=1.25, scheduler="Karras", hr_scheduler="Karras"))
    assert "Hires schedule type" not in text


def test_hires_timestep_sampler_over_http(client):
    response = txt2img(client, enable_hr=True, hr_scale=1.25, hr_sampler_name="DDIM", hr_second_pass_steps=3)
    text = infotext(response)
    assert "Hires sampler: DDIM" in text and decode(response.json()["images"][0]).size == (80, 80)

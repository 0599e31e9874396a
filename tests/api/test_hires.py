"""txt2img with hires fix (enable_hr) end to end on the embedded tiny model."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.api.payloads import a1111_test_payload, webuiapi_txt2img


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def hires(client, **overrides):
    payload = webuiapi_txt2img(**{"enable_hr": True, "steps": 3, "hr_scale": 1.5, "seed": 11, **overrides})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    return body, json.loads(body["info"])


def test_webuiapi_hires_gives_the_target_size_and_infotext(client):
    body, info = hires(client)
    assert decode(body["images"][0]).size == (96, 96)
    text = info["infotexts"][0]
    assert "Size: 64x64" in text and "Denoising strength: 0.7" in text
    assert "Hires upscale: 1.5" in text and "Hires upscaler: Latent" in text
    assert text.index("Denoising strength") < text.index("Hires upscale") < text.index("Hires upscaler")


@pytest.mark.parametrize("upscaler", ["Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                                      "Latent (nearest)", "Latent (nearest-exact)", "Lanczos", "Nearest", "None"])
def test_every_builtin_upscaler_works(client, upscaler):
    body, info = hires(client, hr_upscaler=upscaler, hr_scale=1.25)
    assert decode(body["images"][0]).size == (80, 80)
    assert f"Hires upscaler: {upscaler}" in info["infotexts"][0]


def test_resize_to_both_sides_covers_then_crops(client):
    body, info = hires(client, hr_resize_x=96, hr_resize_y=64)
    assert decode(body["images"][0]).size == (96, 64)
    assert "Hires resize: 96x64" in info["infotexts"][0]


def test_only_one_side_keeps_the_aspect(client):
    body, _ = hires(client, hr_resize_x=80, width=64, height=128)
    assert decode(body["images"][0]).size == (80, 160)


def test_legacy_firstphase_size(client):
    body, info = hires(client, firstphase_width=64, firstphase_height=64, width=128, height=96)
    assert decode(body["images"][0]).size == (128, 96)
    assert "Size: 64x64" in info["infotexts"][0]


def test_null_denoising_strength_means_075(client):
    _, info = hires(client, denoising_strength=None)
    assert "Denoising strength: 0.75" in info["infotexts"][0]


def test_second_pass_steps_sampler_and_prompt_reach_the_infotext(client):
    _, info = hires(client, hr_second_pass_steps=2, hr_sampler_name="Euler", hr_prompt="a dog")
    text = info["infotexts"][0]
    assert "Hires steps: 2" in text and "Hires sampler: Euler" in text and 'Hires prompt: a dog' in text


def test_hires_changes_the_image_and_is_reproducible(client):
    first, _ = hires(client)
    again, _ = hires(client)
    other, _ = hires(client, denoising_strength=0.3)
    assert first["images"] == again["images"] and first["images"] != other["images"]


def test_a1111_hires_payload_with_denoising_zero(client):
    payload = a1111_test_payload(enable_hr=True, hr_scale=2, denoising_strength=0)
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    assert decode(response.json()["images"][0]).size == (128, 128)


def test_unknown_upscaler_is_a_400(client):
    # ("R-ESRGAN 4x+" is A1111's built-in: fetched on first use; tests/api/test_first_use_weights.py)
    response = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(enable_hr=True, hr_upscaler="4x-NoSuchModel"))
    assert response.status_code == 400
    assert "could not find upscaler named" in response.text and "Lanczos" in response.text  # lists the names


def test_unknown_hires_checkpoint_is_a_404(client):
    response = client.post(
        "/sdapi/v1/txt2img", json=webuiapi_txt2img(enable_hr=True, hr_checkpoint_name="other.safetensors")
    )
    assert response.status_code == 404
    assert "Could not find checkpoint with name other.safetensors" in response.text



def test_forge_hr_cfg_drives_the_sd_second_pass(client):
    """Forge applies hr_cfg to every family (sd_samplers_cfg_denoiser: cond_scale = p.hr_cfg in
    the hires pass). Absent, the second pass keeps cfg_scale (A1111) and writes no key."""
    plain, plain_info = hires(client, cfg_scale=7)
    same, same_info = hires(client, cfg_scale=7, hr_cfg=7)
    other, other_info = hires(client, cfg_scale=7, hr_cfg=2.5)
    pixels = decode(plain["images"][0]).tobytes()
    assert decode(same["images"][0]).tobytes() == pixels  # the PNG's infotext differs
    assert decode(other["images"][0]).tobytes() != pixels
    assert "Hires CFG Scale" not in plain_info["infotexts"][0]
    text = other_info["infotexts"][0]
    assert "CFG scale: 7.0" in text and "Hires CFG Scale: 2.5" in text
    assert text.index("Denoising strength") < text.index("Hires CFG Scale") < text.index("Hires upscale")
    assert other_info["extra_generation_params"]["Hires CFG Scale"] == 2.5
    pasted, _ = hires(client, infotext=text)
    assert pasted["images"][0] == other["images"][0]


def test_forge_hr_additional_modules_same_choices_only(client):
    """Forge's "Use same choices" (and the job's own, here none: "Built-in") run and are
    written; another module set for the second pass is a 400 naming the field."""
    _, info = hires(client, hr_additional_modules=["Use same choices"])
    assert "Hires Module 1: Use same choices" in info["infotexts"][0]
    _, info = hires(client, hr_additional_modules=[])
    assert "Hires Module 1: Built-in" in info["infotexts"][0]
    payload = webuiapi_txt2img(enable_hr=True, steps=2, hr_scale=1.5, hr_additional_modules=["ae.safetensors"])
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 400, response.text
    assert "hr_additional_modules" in response.json()["detail"]

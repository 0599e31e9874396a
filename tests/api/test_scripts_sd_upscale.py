"""script_name "sd upscale": A1111's own test payload, sizes, tiles, infotext, bad args."""

from __future__ import annotations

import json

import pytest

from tests.api.payloads import a1111_img2img_payload
from tests.api.test_img2img import decode, gradient, png_b64


def upscale(client, script_args, **overrides):
    payload = a1111_img2img_payload(
        init_images=[png_b64(gradient())], script_name="sd upscale", script_args=script_args
    )
    payload.update(overrides)
    return client.post("/sdapi/v1/img2img", json=payload)


def test_a1111_test_payload_answers_200_with_the_upscaled_image(client):
    response = upscale(client, ["", 8, "Lanczos", 2.0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1
    image = decode(body["images"][0])
    assert image.size == (128, 128)
    assert "parameters" not in image.info  # A1111's stitched image has no text chunk
    info = json.loads(body["info"])
    text = info["infotexts"][0]
    assert "SD upscale overlap: 8, SD upscale upscaler: Lanczos" in text
    assert "Size: 64x64" in text and "Denoising strength: 0.75" in text  # the tile job's


def test_upscaler_by_index_and_n_iter_passes(client):
    body = upscale(client, [None, 16, 1, 1.5], n_iter=2, batch_size=2, seed=11).json()
    assert [decode(image).size for image in body["images"]] == [(96, 96), (96, 96)]
    info = json.loads(body["info"])
    assert info["seed"] == 11 and len(info["infotexts"]) == 2
    assert body["images"][0] != body["images"][1]  # the second pass starts at seed + 1


def test_same_seed_is_reproducible(client):
    first = upscale(client, ["", 8, "Nearest", 1.5], seed=3, steps=2).json()["images"]
    assert upscale(client, ["", 8, "Nearest", 1.5], seed=3, steps=2).json()["images"] == first


def test_none_upscaler_keeps_the_size_and_redraws_tiles(client):
    body = upscale(client, ["", 16, "None", 2.0], width=48, height=48, seed=1, steps=2).json()
    assert decode(body["images"][0]).size == (64, 64)


@pytest.mark.parametrize("args, fragment", [
    (["", 64, "Lanczos", 2.0], "tile overlap"),
    (["", -8, "Lanczos", 2.0], "tile overlap"),
    (["", 8, "ESRGAN_9x", 2.0], "unknown upscaler"),
    (["", 8, 17, 2.0], "out of range"),
    (["", 8, "Lanczos", 0], "scale factor"),
    (["", "wide", "Lanczos", 2.0], "Tile overlap"),
    (["", 8, "Lanczos", 5000], "scale factor"),
])
def test_bad_script_args_are_422(client, args, fragment):
    response = upscale(client, args)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


def test_a_mask_is_refused(client):
    response = upscale(client, ["", 8, "Lanczos", 2.0], mask=png_b64(gradient()))
    assert response.status_code == 422 and "mask" in response.json()["detail"]

"""POST /sdapi/v1/img2img end to end on the embedded tiny model."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from tests.api.payloads import a1111_img2img_payload


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def gradient(width: int = 64, height: int = 64) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                             np.full((height, width, 1), 90, np.float32)], axis=2)
    return Image.fromarray(pixels.astype(np.uint8))


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def post(client, **overrides):
    payload = a1111_img2img_payload(**{"init_images": [png_b64(gradient())], "seed": 7, **overrides})
    return client.post("/sdapi/v1/img2img", json=payload)


def test_a1111_simple_payload_answers_200(client):
    response = post(client, init_images=["data:image/png;base64," + png_b64(gradient())])
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1
    assert decode(body["images"][0]).size == (64, 64)
    assert body["parameters"]["init_images"] is None  # not echoed unless include_init_images
    info = json.loads(body["info"])
    assert "Denoising strength: 0.75" in info["infotexts"][0]


def test_infotext_puts_denoising_strength_after_size_keys(client):
    info = json.loads(post(client, denoising_strength=0.5).json()["info"])
    text = info["infotexts"][0]
    assert text.index("Model:") < text.index("Denoising strength: 0.5")
    assert info["denoising_strength"] == 0.5


def test_include_init_images_echoes_them(client):
    body = post(client, include_init_images=True).json()
    assert body["parameters"]["init_images"] and len(body["parameters"]["init_images"]) == 1


def test_same_seed_is_reproducible_and_strength_matters(client):
    first = post(client).json()["images"]
    second = post(client).json()["images"]
    weaker = post(client, denoising_strength=0.2).json()["images"]
    assert first == second
    assert weaker != first


def test_output_sizes_per_resize_mode(client):
    for mode in range(4):
        payload = a1111_img2img_payload(init_images=[png_b64(gradient(96, 48))], resize_mode=mode, width=64, height=32)
        response = client.post("/sdapi/v1/img2img", json=payload)
        assert response.status_code == 200, (mode, response.text)
        assert decode(response.json()["images"][0]).size == (64, 32)


def test_several_images_set_the_batch_size(client):
    images = [png_b64(gradient()), png_b64(gradient().transpose(Image.FLIP_LEFT_RIGHT))]
    body = client.post("/sdapi/v1/img2img", json=a1111_img2img_payload(init_images=images, batch_size=4, seed=3)).json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 2 and info["batch_size"] == 2


def test_one_image_is_repeated_over_the_batch_and_iterations(client):
    body = post(client, batch_size=2, n_iter=2).json()
    assert len(body["images"]) == 4
    assert json.loads(body["info"])["all_seeds"] == [7, 8, 9, 10]


def test_more_images_than_batch_size_is_a_400(client):
    response = client.post("/sdapi/v1/img2img", json=a1111_img2img_payload(init_images=[png_b64(gradient())] * 3))
    assert response.status_code == 400
    assert "bad number of images" in response.text


def test_bad_inputs_are_4xx(client):
    assert client.post("/sdapi/v1/img2img", json=a1111_img2img_payload()).status_code == 404
    assert client.post("/sdapi/v1/img2img", json=a1111_img2img_payload(init_images=["not base64!!"])).status_code == 400
    assert client.post("/sdapi/v1/img2img", json=a1111_img2img_payload(init_images=[""])).status_code == 400
    assert client.post("/sdapi/v1/img2img", json=a1111_img2img_payload(init_images=[])).status_code == 400
    truncated = png_b64(gradient())[:40]
    assert client.post("/sdapi/v1/img2img", json=a1111_img2img_payload(init_images=[truncated])).status_code == 400


def test_mask_is_a_clear_501_until_inpainting_lands(client):
    response = post(client, mask=png_b64(Image.new("L", (64, 64), 255)))
    assert response.status_code == 501
    assert "mask" in response.text


def test_timestep_sampler_is_a_clear_501(client):
    response = post(client, sampler_index="DDIM", sampler_name="DDIM")
    assert response.status_code == 501


def test_noise_multiplier_goes_to_the_infotext(client):
    info = json.loads(post(client, initial_noise_multiplier=0.9).json()["info"])
    assert "Noise multiplier: 0.9" in info["infotexts"][0]

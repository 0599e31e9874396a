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


def test_timestep_sampler_answers_200(client):
    response = post(client, sampler_index="DDIM", sampler_name="DDIM")
    assert response.status_code == 200, response.text


def test_noise_multiplier_goes_to_the_infotext(client):
    info = json.loads(post(client, initial_noise_multiplier=0.9).json()["info"])
    assert "Noise multiplier: 0.9" in info["infotexts"][0]


# ---------------------------------------------------------------------------
# Inpainting
# ---------------------------------------------------------------------------


def half_mask(width: int = 64, height: int = 64) -> Image.Image:
    """White (repaint) on the left half."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[:, : width // 2] = 255
    return Image.fromarray(pixels)


def inpaint(client, init: Image.Image, mask: Image.Image, **overrides):
    payload = a1111_img2img_payload(
        **{"init_images": [png_b64(init)], "mask": png_b64(mask), "seed": 5, "denoising_strength": 1.0, **overrides}
    )
    response = client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def test_a1111_inpaint_payload_keeps_unmasked_pixels(client):
    init = gradient()
    body = inpaint(client, init, half_mask())
    out, src = np.asarray(decode(body["images"][0]).convert("RGB")), np.asarray(init)
    assert np.array_equal(out[:, 45:], src[:, 45:])  # well outside the blurred edge: unchanged
    assert np.abs(out[:, :20].astype(int) - src[:, :20]).mean() > 5  # the masked side was repainted
    text = json.loads(body["info"])["infotexts"][0]
    assert "Mask blur: 4" in text and "Masked content: fill" in text and "Inpaint area" not in text


def test_inverted_mask_repaints_the_other_side(client):
    init = gradient()
    body = inpaint(client, init, half_mask(), inpainting_mask_invert=True)
    out, src = np.asarray(decode(body["images"][0]).convert("RGB")), np.asarray(init)
    assert np.array_equal(out[:, :19], src[:, :19])
    assert np.abs(out[:, 44:].astype(int) - src[:, 44:]).mean() > 5
    assert "Mask mode: Inpaint not masked" in json.loads(body["info"])["infotexts"][0]


def test_fill_modes_differ(client):
    outputs = [inpaint(client, gradient(), half_mask(), inpainting_fill=fill, denoising_strength=0.6)["images"][0]
               for fill in range(4)]
    assert len(set(outputs)) == 4


def test_full_res_inpainting_pastes_back_in_place(client):
    init = gradient(128, 96)
    mask = np.zeros((96, 128), np.uint8)
    mask[40:56, 50:70] = 255
    body = inpaint(client, init, Image.fromarray(mask), inpaint_full_res=True, inpaint_full_res_padding=4, mask_blur=0)
    out, src = np.asarray(decode(body["images"][0]).convert("RGB")), np.asarray(init)
    assert out.shape == (96, 128, 3)  # the original's size, not the job's 64x64
    outside = np.ones((96, 128), bool)
    outside[40:56, 50:70] = False
    assert np.array_equal(out[outside], src[outside])
    assert np.abs(out[40:56, 50:70].astype(int) - src[40:56, 50:70]).mean() > 5
    text = json.loads(body["info"])["infotexts"][0]
    assert "Inpaint area: Only masked" in text and "Masked area padding: 4" in text


def test_blank_mask_with_full_res_is_plain_img2img(client):
    body = inpaint(client, gradient(), Image.new("L", (64, 64), 0), inpaint_full_res=True)
    text = json.loads(body["info"])["infotexts"][0]
    assert "Mask blur: 4" in text  # A1111 writes it before finding the mask blank
    assert "Inpaint area" not in text and "Masked content" not in text


def test_mask_of_a_different_size_is_a_400(client):
    payload = a1111_img2img_payload(init_images=[png_b64(gradient())], mask=png_b64(half_mask(32, 32)))
    response = client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 400
    assert "same size" in response.text


def test_broken_mask_is_a_400(client):
    payload = a1111_img2img_payload(init_images=[png_b64(gradient())], mask="%%%")
    assert client.post("/sdapi/v1/img2img", json=payload).status_code == 400

"""Class 5: one pixel budget for every decoded image and every output size, on every route."""

from __future__ import annotations

import pytest

from tests.security.helpers import TINY, assert_a1111_error, png_b64, png_claiming
from webui_api.errors import InvalidImage, LimitExceeded
from webui_api.pixel_budget import pixel_budget
from webui_api.serving.guards import RequestLimits

BUDGET = 256 * 256


@pytest.fixture()
def budget_client(make_client):
    return make_client(guards=RequestLimits(max_input_pixels=BUDGET))


def test_the_decoder_refuses_from_the_header_before_decoding():
    from webui_api.postprocess.encode import decode_image_base64

    with pixel_budget(BUDGET):
        with pytest.raises(LimitExceeded) as refused:
            decode_image_base64(png_claiming(300, 300), "the probe")
        assert refused.value.status_code == 413 and "the probe (300x300)" in refused.value.detail
        assert decode_image_base64(png_b64(200, 200)).size == (200, 200)
    with pytest.raises(LimitExceeded) as bomb:  # past PIL's own refusal: far over any budget
        decode_image_base64(png_claiming(40_000, 40_000))
    assert "decompression bomb" in bomb.value.detail


def test_outside_a_request_the_default_budget_applies_never_none():
    from webui_api.postprocess.encode import decode_image_base64

    with pytest.raises(LimitExceeded):
        decode_image_base64(png_claiming(5000, 4000))  # 20 M pixels > the 16.7 M default


@pytest.mark.parametrize("text", ["aGVsbG8é", "iVBORw0KGgo\u00a0AAAA", "💥"])
def test_non_ascii_base64_is_an_invalid_image_not_a_crash(text):
    from webui_api.postprocess.encode import decode_image_base64

    with pytest.raises(InvalidImage):
        decode_image_base64(text)


def test_detect_refuses_a_bomb_and_a_map_size_over_the_budget(budget_client):
    bomb = budget_client.post(
        "/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [png_claiming(300, 300)]}
    )
    assert_a1111_error(bomb, 413, "--max-input-pixels", "300x300")
    strip = budget_client.post(
        "/controlnet/detect",
        json={
            "controlnet_module": "canny",
            "controlnet_processor_res": 512,
            "controlnet_input_images": [png_b64(1, 200)],
        },
    )
    assert_a1111_error(strip, 413, "detected map", "--max-input-pixels")
    fine = budget_client.post(
        "/controlnet/detect",
        json={
            "controlnet_module": "canny",
            "controlnet_processor_res": 64,
            "controlnet_input_images": [png_b64(64, 64)],
        },
    )
    assert fine.status_code == 200, fine.text


def test_detect_refuses_non_ascii_and_non_finite_numbers(budget_client):
    bad = budget_client.post(
        "/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": ["ab\u00e9"]}
    )
    assert_a1111_error(bad, 400, "Invalid encoded image")
    nan = budget_client.post(
        "/controlnet/detect",
        content=b'{"controlnet_module": "canny", "controlnet_processor_res": NaN, "controlnet_input_images": ["x"]}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422


def test_controlnet_unit_images_in_a_generation_are_budgeted(budget_client):
    unit = {"enabled": True, "module": "canny", "model": "None", "image": png_claiming(300, 300)}
    response = budget_client.post(
        "/sdapi/v1/txt2img", json={**TINY, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    )
    assert_a1111_error(response, 413, "300x300")


def test_extras_upscale_output_is_budgeted(budget_client):
    response = budget_client.post(
        "/sdapi/v1/extra-single-image", json={"image": png_b64(8, 8), "upscaler_1": "Lanczos", "upscaling_resize": 100}
    )
    assert_a1111_error(response, 413, "the upscaled image", "--max-input-pixels")
    by_size = budget_client.post(
        "/sdapi/v1/extra-single-image",
        json={
            "image": png_b64(8, 8),
            "upscaler_1": "Lanczos",
            "resize_mode": 1,
            "upscaling_resize_w": 4000,
            "upscaling_resize_h": 4000,
        },
    )
    assert_a1111_error(by_size, 413, "4000x4000")
    bomb = budget_client.post(
        "/sdapi/v1/extra-batch-images",
        json={"imageList": [{"data": png_claiming(300, 300), "name": "a.png"}], "upscaler_1": "Lanczos"},
    )
    assert_a1111_error(bomb, 413, "300x300")


def test_seed_resize_size_is_budgeted(make_client):
    client = make_client(guards=RequestLimits(max_pixels=128 * 128))
    response = client.post(
        "/sdapi/v1/txt2img", json={**TINY, "seed_resize_from_w": 100_000, "seed_resize_from_h": 100_000}
    )
    assert_a1111_error(response, 422, "seed_resize_from", "--max-pixels")


def test_sd_upscale_target_inside_the_script_is_budgeted(budget_client):
    body = {
        **TINY,
        "init_images": [png_b64(64, 64)],
        "script_name": "sd upscale",
        "script_args": [None, 8, "Lanczos", 8.0],
        "denoising_strength": 0.3,
    }
    response = budget_client.post("/sdapi/v1/img2img", json=body)
    assert_a1111_error(response, 413, "sd upscale", "512x512")


def test_img2img_init_image_and_mask_are_budgeted(budget_client):
    big = budget_client.post("/sdapi/v1/img2img", json={**TINY, "init_images": [png_claiming(300, 300)]})
    assert_a1111_error(big, 413, "300x300")
    mask = budget_client.post(
        "/sdapi/v1/img2img", json={**TINY, "init_images": [png_b64()], "mask": png_claiming(300, 300)}
    )
    assert_a1111_error(mask, 413, "300x300")

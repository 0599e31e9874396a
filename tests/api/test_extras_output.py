"""Result encoding options: every samples_format round-trips its infotext through png-info;
png_compress_level and webp_lossless reach the encoder."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.api.payloads import webuiapi_txt2img


def _decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.mark.parametrize("fmt,pil_format", [("png", "PNG"), ("jpg", "JPEG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_txt2img_infotext_round_trips_through_png_info(client, fmt, pil_format):
    payload = webuiapi_txt2img(prompt="a red fox, snow", override_settings={"samples_format": fmt})
    body = client.post("/sdapi/v1/txt2img", json=payload).json()
    infotext = json.loads(body["info"])["infotexts"][0]
    assert _decode(body["images"][0]).format == pil_format
    info = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()
    assert info["info"] == infotext
    assert info["parameters"]["Prompt"] == "a red fox, snow"


def test_webp_lossless_option_keeps_pixels(client):
    """Lossless WEBP returns the pixels the PNG does; lossy WEBP does not."""
    payloads = {name: webuiapi_txt2img(override_settings=settings) for name, settings in {
        "png": {"samples_format": "png"},
        "lossless": {"samples_format": "webp", "webp_lossless": True},
        "lossy": {"samples_format": "webp", "webp_lossless": False, "jpeg_quality": 10},
    }.items()}
    pixels = {name: np.asarray(_decode(client.post("/sdapi/v1/txt2img", json=p).json()["images"][0]).convert("RGB"))
              for name, p in payloads.items()}
    assert np.array_equal(pixels["lossless"], pixels["png"])
    assert not np.array_equal(pixels["lossy"], pixels["png"])


def test_png_compress_level_option_is_listed_and_applied(client):
    assert client.get("/sdapi/v1/options").json()["png_compress_level"] == 1
    sizes = {}
    for level in (0, 9):
        payload = webuiapi_txt2img(override_settings={"png_compress_level": level})
        sizes[level] = len(base64.b64decode(client.post("/sdapi/v1/txt2img", json=payload).json()["images"][0]))
    assert sizes[0] > sizes[9]


def test_bad_png_compress_level_is_400(client):
    payload = webuiapi_txt2img(override_settings={"png_compress_level": 12})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 400 and "png_compress_level" in response.json()["detail"]

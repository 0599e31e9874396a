"""Seamless tiling: circular padding for the job only, and an image that wraps around."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import torch
from PIL import Image

from tests.api.payloads import webuiapi_txt2img
from webui_api.engine.tiling import apply_tiling, model_convolutions


def test_padding_is_circular_only_while_applied(tiny_model):
    layers = model_convolutions(tiny_model)
    assert layers and all(layer.padding_mode == "zeros" for layer in layers)
    padding = apply_tiling(tiny_model, True)
    assert all(layer.padding_mode == "circular" for layer in layers)
    padding.restore()
    assert all(layer.padding_mode == "zeros" for layer in layers)
    assert apply_tiling(tiny_model, False).saved == []


def test_circular_unet_output_commutes_with_a_horizontal_roll(tiny_model):
    """With circular padding, shifting the input around the edge shifts the output the same
    way: the property that makes the picture tile."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    conv = model_convolutions(tiny_model)[0]
    padding = apply_tiling(tiny_model, True)
    try:
        with torch.inference_mode():
            rolled_after = torch.roll(conv(x), 3, dims=3)
            rolled_before = conv(torch.roll(x, 3, dims=3))
    finally:
        padding.restore()
    assert torch.allclose(rolled_after, rolled_before, atol=1e-5)


def test_tiling_request_changes_the_image_and_writes_the_infotext(client, tiny_model):
    plain = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=4)).json()
    tiled = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=4, tiling=True)).json()
    assert plain["images"] != tiled["images"]
    assert "Tiling: True" in json.loads(tiled["info"])["infotexts"][0]
    assert "Tiling" not in json.loads(plain["info"])["infotexts"][0]
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(tiled["images"][0]))))
    assert image.shape == (64, 64, 3)

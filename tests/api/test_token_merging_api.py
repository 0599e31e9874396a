"""Token merging over HTTP: override_settings' token_merging_ratio(_hr) on a tiny SD1
checkpoint changes the image and writes A1111's infotext keys, which png-info reads back and
a pasted infotext turns into the same override."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.api.payloads import webuiapi_txt2img
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    models = tmp_path_factory.mktemp("tome-models") / "models"
    write_checkpoint(models / "Stable-diffusion" / "main.safetensors", build_networks("sd1", seed=7))
    return models


@pytest.fixture()
def models_client(make_client, tmp_path, model_files):
    shutil.copytree(model_files, tmp_path / "models", dirs_exist_ok=True)
    return make_client(own_engine=True)


def txt2img(client, **fields):
    payload = webuiapi_txt2img(**{"steps": 2, "seed": 3, "sampler_name": "Euler", "width": 64, "height": 64, **fields})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def infotext(body) -> str:
    return json.loads(body["info"])["infotexts"][0]


def pixels(body) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))))


def test_override_settings_ratio_changes_the_image_and_the_infotext(models_client):
    plain = txt2img(models_client)
    merged = txt2img(models_client, override_settings={"token_merging_ratio": 0.5})
    assert "Token merging ratio" not in infotext(plain)
    assert "Token merging ratio: 0.5," in infotext(merged)
    assert "Token merging ratio hr" not in infotext(merged)  # no hires fix
    assert not np.array_equal(pixels(plain), pixels(merged))
    assert np.array_equal(pixels(plain), pixels(txt2img(models_client)))  # the next request is untouched


def test_hires_ratio_key_and_png_info_round_trip(models_client):
    body = txt2img(models_client, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.5,
                   hr_second_pass_steps=2, override_settings={"token_merging_ratio_hr": 0.3})
    text = infotext(body)
    assert "Token merging ratio hr: 0.3" in text and "Token merging ratio:" not in text
    info = models_client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()
    assert info["info"] == text
    assert float(info["parameters"]["Token merging ratio hr"]) == 0.3


def test_pasted_infotext_sets_the_ratio_again(models_client):
    first = txt2img(models_client, override_settings={"token_merging_ratio": 0.5})
    again = txt2img(models_client, infotext=infotext(first))
    assert "Token merging ratio: 0.5," in infotext(again)
    assert np.array_equal(pixels(first), pixels(again))


def test_xyz_plot_token_merging_axis(models_client):
    """A1111's "Token merging ratio" axis: each cell runs with its ratio (an override)."""
    from tests.api.test_scripts_xyz import NOTHING, xyz_args

    args = xyz_args(x=("Token merging ratio", "0, 0.5"), y=(NOTHING, ""), legend=False)
    body = txt2img(models_client, script_name="x/y/z plot", script_args=args)
    zero, half = json.loads(body["info"])["infotexts"][1:]
    assert "Token merging ratio" not in zero and "Token merging ratio: 0.5," in half
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in body["images"][1:]]
    assert not np.array_equal(images[0], images[1])
    assert np.array_equal(images[0], pixels(txt2img(models_client)))


@pytest.mark.parametrize("ratio", ["fast", float("nan")])
def test_an_unusable_ratio_is_a_400(models_client, ratio):
    payload = webuiapi_txt2img(steps=2, override_settings={"token_merging_ratio": ratio})
    response = models_client.post("/sdapi/v1/txt2img", content=json.dumps(payload),
                                  headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert "token_merging_ratio" in response.text

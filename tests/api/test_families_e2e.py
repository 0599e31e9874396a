"""Every checkpoint family through POST /sdapi/v1/txt2img: tiny SD2 (v-prediction), SDXL base
and SDXL refiner files in A1111's folder, selected per request, several samplers each."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.engine.ldm_checkpoints import build_networks, write_checkpoint

V_YAML = 'model:\n  params:\n    parameterization: "v"\n'
SAMPLERS = ["Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DDIM", "UniPC"]


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families") / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for index, family in enumerate(("sd2", "sdxl", "sdxl-refiner")):
        write_checkpoint(folder / f"tiny-{family}.safetensors", build_networks(family, seed=10 + index))
    (folder / "tiny-sd2.yaml").write_text(V_YAML)
    return folder.parent.parent


@pytest.fixture()
def family_client(make_client, family_files, tmp_path):
    import shutil

    shutil.copytree(family_files / "models", tmp_path / "models")
    return make_client(own_engine=True)


def generate(client, checkpoint, **fields):
    body = {"prompt": "a (cat:1.2) AND a dog", "negative_prompt": "", "steps": 3, "width": 64, "height": 64,
            "seed": 7, "override_settings": {"sd_model_checkpoint": checkpoint}, **fields}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("checkpoint", ["tiny-sd2", "tiny-sdxl", "tiny-sdxl-refiner"])
def test_family_generates_deterministically_with_several_samplers(family_client, checkpoint):
    for sampler in SAMPLERS:
        first = generate(family_client, checkpoint, sampler_name=sampler)
        again = generate(family_client, checkpoint, sampler_name=sampler)
        assert first["images"] == again["images"], sampler
        image = Image.open(io.BytesIO(base64.b64decode(first["images"][0])))
        assert image.size == (64, 64)
        info = json.loads(first["info"])
        assert info["sd_model_name"] == checkpoint and f"Model: {checkpoint}" in info["infotexts"][0]


def test_sdxl_size_conditioning_and_negative_prompt_matter(family_client):
    plain = generate(family_client, "tiny-sdxl")["images"]
    assert generate(family_client, "tiny-sdxl", negative_prompt="blurry")["images"] != plain
    assert generate(family_client, "tiny-sdxl", width=72)["images"][0] != plain[0]


def test_sd2_v_prediction_differs_from_reading_it_as_eps(family_client, tmp_path):
    v_image = generate(family_client, "tiny-sd2")["images"]
    (tmp_path / "models" / "Stable-diffusion" / "tiny-sd2.yaml").write_text(
        'model:\n  params:\n    parameterization: "eps"\n'
    )
    family_client.post("/sdapi/v1/refresh-checkpoints")
    family_client.post("/sdapi/v1/unload-checkpoint")
    assert generate(family_client, "tiny-sd2")["images"] != v_image

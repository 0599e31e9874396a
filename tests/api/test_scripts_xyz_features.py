"""X/Y/Z plot axes over features that landed after the plot: face restore per cell, image CFG
scale (instruct-pix2pix), refiner checkpoint and refiner switch at, on tiny models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.api.payloads import a1111_img2img_payload
from tests.api.test_face_restore import _models_with_gfpgan
from tests.api.test_img2img import decode, gradient, png_b64
from tests.api.test_scripts_xyz import NOTHING, TITLE, run, xyz_args
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint


def cells(response) -> list[str]:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])["infotexts"][1:]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny SD1 main model, a second one (the refiner) and an instruct-pix2pix one."""
    models = tmp_path_factory.mktemp("xyz-models") / "models"
    write_checkpoint(models / "Stable-diffusion" / "main.safetensors", build_networks("sd1", seed=1))
    write_checkpoint(models / "Stable-diffusion" / "second.safetensors", build_networks("sd1", seed=2))
    write_checkpoint(models / "Stable-diffusion" / "ip2p.safetensors", build_networks("sd1", seed=6, in_channels=8))
    return models


@pytest.fixture()
def models_client(make_client, tmp_path, model_files):
    shutil.copytree(model_files, tmp_path / "models", dirs_exist_ok=True)
    return make_client(own_engine=True)


def test_face_restore_axis_turns_restoration_on_per_cell(client, tmp_path):
    _models_with_gfpgan(tmp_path)
    texts = cells(run(client, xyz_args(x=("Face restore", "False, GFPGAN, true"), y=(NOTHING, "")), seed=4,
                      override_settings={"face_restoration_model": "GFPGAN"}))
    assert "Face restoration" not in texts[0]
    assert "Face restoration: GFPGAN" in texts[1] and "Face restoration: GFPGAN" in texts[2]


def test_face_restore_axis_names_missing_weights(client):
    pytest.importorskip("spandrel_extra_arches")  # without the package, the 400 names the package instead
    response = run(client, xyz_args(x=("Face restore", "CodeFormer"), y=(NOTHING, "")))
    assert response.status_code == 400 and "codeformer-v0.1.0.pth" in response.text


def test_image_cfg_scale_axis_drives_an_edit_model(models_client):
    payload = a1111_img2img_payload(
        init_images=[png_b64(gradient())], script_name=TITLE, steps=2, seed=3, sampler_name="Euler",
        override_settings={"sd_model_checkpoint": "ip2p"},
        script_args=xyz_args(x=("Image CFG Scale", "1.0, 1.5"), y=(NOTHING, ""), legend=False))
    response = models_client.post("/sdapi/v1/img2img", json=payload)
    texts = cells(response)
    assert "Image CFG scale: 1.0" in texts[0] and "Image CFG scale: 1.5" in texts[1]
    images = [np.asarray(decode(image)) for image in response.json()["images"][1:]]
    assert not np.array_equal(images[0], images[1])


def test_refiner_checkpoint_axis(models_client):
    args = xyz_args(x=("Refiner checkpoint", "", ["None", "second"]), y=(NOTHING, ""), legend=False)
    texts = cells(run(models_client, args, refiner_switch_at=0.5, sampler_name="Euler",
                      override_settings={"sd_model_checkpoint": "main"}))
    assert "Refiner" not in texts[0]
    assert "Refiner: second [" in texts[1] and "Refiner switch at: 0.5" in texts[1]


def test_refiner_switch_at_axis(models_client):
    args = xyz_args(x=("Refiner switch at", "0.3, 0.8"), y=(NOTHING, ""), legend=False)
    response = run(models_client, args, refiner_checkpoint="second", sampler_name="Euler", steps=4,
                   override_settings={"sd_model_checkpoint": "main"})
    texts = cells(response)
    assert "Refiner switch at: 0.3" in texts[0] and "Refiner switch at: 0.8" in texts[1]
    images = [np.asarray(decode(image)) for image in response.json()["images"][1:]]
    assert not np.array_equal(images[0], images[1])


def test_face_restore_axis_model_name_picks_the_restorer(client, tmp_path):
    pytest.importorskip("spandrel_extra_arches")  # without the package, the 400 names the package instead
    _models_with_gfpgan(tmp_path)  # GFPGAN only: the option's default model (CodeFormer) has no weights
    texts = cells(run(client, xyz_args(x=("Face restore", "GFPGAN"), y=(NOTHING, "")), seed=4))
    assert "Face restoration: GFPGAN" in texts[0]
    response = run(client, xyz_args(x=("Face restore", "true"), y=(NOTHING, "")), seed=4)
    assert response.status_code == 400 and "codeformer-v0.1.0.pth" in response.text

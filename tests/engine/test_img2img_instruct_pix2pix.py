"""instruct-pix2pix ("edit") models: 8-channel UNets load, get the init image's unscaled
latent as image conditioning, and image_cfg_scale drives A1111's three-way guidance; for any
other model image_cfg_scale is ignored, as in A1111."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.ldm_checkpoints import build_networks, write_checkpoint
from tests.engine.test_img2img_prep import img2img_job, run_img2img_job
from webui_api.engine.cond_types import BatchConditioning
from webui_api.engine.denoiser import CFGDenoiser, GuidanceOptions
from webui_api.engine.facade import Engine
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.progress import CancelToken


class RowInner:
    """A fake model wrapper: each output row is x + mean(cond row) + 10 * mean(image_cond row)."""

    def __call__(self, x, sigma, cond, image_cond=None):
        text = cond.crossattn.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        image = image_cond.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)
        return x + text + 10 * image

    def to_x0(self, x, out, sigma):
        return out


def test_three_way_guidance_formula():
    x, image = torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0.5)
    conditioning = BatchConditioning.plain(torch.full((1, 3, 2), 2.0), torch.full((1, 3, 2), -1.0))
    cfg = CFGDenoiser(RowInner(), CancelToken(), GuidanceOptions(image_cfg_scale=1.5))
    out = cfg(x, torch.ones(1), conditioning, cond_scale=7.0, image_cond=image)
    c, i, u = 2.0 + 5.0, -1.0 + 5.0, -1.0 + 0.0  # (prompt, image), (negative, image), (negative, no image)
    assert torch.allclose(out, torch.full_like(x, u + 7.0 * (c - i) + 1.5 * (i - u)))
    plain = CFGDenoiser(RowInner(), CancelToken(), GuidanceOptions(image_cfg_scale=1.0))
    assert torch.allclose(plain(x, torch.ones(1), conditioning, cond_scale=7.0, image_cond=image),
                          torch.full_like(x, i + 7.0 * (c - i)))


@pytest.fixture(scope="module")
def edit_model(tmp_path_factory):
    sd = tmp_path_factory.mktemp("ip2p") / "Stable-diffusion"
    write_checkpoint(sd / "ip2p.safetensors", build_networks("sd1", seed=6, in_channels=8))
    return Engine(device="cpu", dtype="float32", paths=ModelPaths(ckpt_dirs=(sd,)), no_hashing=True).load("ip2p")


def test_eight_channel_checkpoint_loads_as_instruct_pix2pix(edit_model):
    assert edit_model.unet_in_channels == 8 and edit_model.architecture.endswith("instruct-pix2pix")


def test_image_cfg_scale_changes_an_edit_models_image(edit_model):
    one, _ = run_img2img_job(edit_model, img2img_job(0.75, image_cfg_scale=1.0))
    strong, _ = run_img2img_job(edit_model, img2img_job(0.75, image_cfg_scale=1.5))
    again, _ = run_img2img_job(edit_model, img2img_job(0.75, image_cfg_scale=1.5))
    pictures = [np.asarray(r.images[0].image) for r in (one, strong, again)]
    assert not np.array_equal(pictures[0], pictures[1]) and np.array_equal(pictures[1], pictures[2])
    assert strong.extra_generation_params["Image CFG scale"] == 1.5


def test_image_cfg_scale_is_ignored_for_other_models(tiny_model):
    without, _ = run_img2img_job(tiny_model, img2img_job(0.75))
    ignored, _ = run_img2img_job(tiny_model, img2img_job(0.75, image_cfg_scale=1.5))
    assert np.array_equal(np.asarray(without.images[0].image), np.asarray(ignored.images[0].image))
    assert "Image CFG scale" not in ignored.extra_generation_params

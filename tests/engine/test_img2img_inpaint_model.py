"""img2img and inpainting on a 9-channel (inpainting) UNet: the image conditioning path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from tests.engine.helpers import RecordingObserver, make_job
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint
from webui_api.engine.img2img import inpaint_image_cond, run_img2img
from webui_api.engine.loading.checkpoint import LoadOptions, load_checkpoint
from webui_api.engine.models import CheckpointInfo
from webui_api.jobs import Img2ImgParams
from webui_api.progress import CancelToken


def inpaint_model(tmp_path):
    path = write_checkpoint(tmp_path / "sd1-inpainting.safetensors", build_networks("sd1", seed=5, in_channels=9))
    options = LoadOptions(torch.device("cpu"), torch.float32, torch.float32)
    return load_checkpoint(CheckpointInfo.for_file(path.name, str(path), None), options)


def job_with(mask):
    x = np.linspace(0, 255, 64, dtype=np.uint8)
    image = Image.fromarray(
        np.stack([np.tile(x, (64, 1)), np.tile(x[:, None], (1, 64)), np.full((64, 64), 90, np.uint8)], 2)
    )
    params = Img2ImgParams(init_images=(image,), denoising_strength=0.8, mask=mask)
    return replace(make_job(steps=3), kind="img2img", img2img=params)


def test_nine_channel_unet_gets_mask_and_masked_image_latent(tmp_path):
    model = inpaint_model(tmp_path)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    job = job_with(Image.fromarray(mask))
    with torch.inference_mode():
        cond = inpaint_image_cond(model, job.img2img, torch.Size((1, 4, 8, 8)))
    assert cond.shape == (1, 5, 8, 8)
    assert torch.equal(cond[0, 0, :, :4], torch.ones(8, 4)) and torch.equal(cond[0, 0, :, 4:], torch.zeros(8, 4))
    result = run_img2img(model, job, RecordingObserver(), CancelToken())
    plain = run_img2img(model, job_with(None), RecordingObserver(), CancelToken())
    assert result.images[0].image.size == (64, 64)
    assert not np.array_equal(np.asarray(result.images[0].image), np.asarray(plain.images[0].image))


def test_ordinary_unet_gets_no_image_cond(tiny_model):
    assert inpaint_image_cond(tiny_model, job_with(None).img2img, torch.Size((1, 4, 8, 8))) is None

"""VAE decode (one image at a time, truncating to uint8) and the cheap live preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui_api.engine.latents import approx_preview, decode_latents, decode_one, to_pil


def test_to_pil_truncates_instead_of_rounding():
    # (x + 1) / 2 = 0.5 -> 127.5 -> 127 (rounding would give 128)
    image = to_pil(torch.zeros(3, 2, 2))
    assert np.asarray(image).tolist() == [[[127] * 3] * 2] * 2
    clipped = np.asarray(to_pil(torch.full((3, 1, 1), 5.0)))
    assert clipped.max() == 255 and np.asarray(to_pil(torch.full((3, 1, 1), -5.0))).max() == 0


@torch.inference_mode()
def test_decode_is_per_image(tiny_model):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    images = decode_latents(tiny_model, latents)
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert all(im.mode == "RGB" for im in images)
    alone = to_pil(decode_one(tiny_model, latents[1:2]))
    assert np.array_equal(np.asarray(images[1]), np.asarray(alone))


@torch.inference_mode()
def test_decode_rejects_wrong_channels(tiny_model):
    with pytest.raises(ValueError, match="latents must be"):
        decode_latents(tiny_model, torch.zeros(1, 3, 8, 8))


def test_cheap_preview_is_linear_at_latent_size():
    latent = torch.zeros(2, 4, 6, 10)
    latent[0, 0] = 1.0  # channel 0 only: rgb = (0.298, 0.207, 0.208)
    preview = approx_preview(latent)
    assert preview.size == (10, 6)
    expected = [int(255 * ((v + 1) / 2)) for v in (0.298, 0.207, 0.208)]
    assert np.asarray(preview)[0, 0].tolist() == expected


def test_cheap_preview_rejects_unknown_family():
    with pytest.raises(ValueError, match="family"):
        approx_preview(torch.zeros(1, 4, 2, 2), family="sd3")


def test_every_loadable_family_has_a_preview():
    """SD2 and the SDXL refiner share SD1's / SDXL's latent spaces; a preview must never fail a job."""
    import torch

    from webui_api.engine.latents import PREVIEW_FAMILY, approx_preview

    latents = torch.zeros(1, 4, 8, 8)
    for family in ("sd1", "sd2", "sdxl", "sdxl-refiner"):
        assert approx_preview(latents, family).size == (8, 8)
    assert approx_preview(latents, "sd2").tobytes() == approx_preview(latents, "sd1").tobytes()
    assert set(PREVIEW_FAMILY) == {"sd1", "sd2", "sdxl", "sdxl-refiner"}


class _OverflowingVae(torch.nn.Module):
    """Decodes to NaN unless it runs in float32, like SDXL's original VAE in fp16."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float16))

    @property
    def dtype(self):
        return self.weight.dtype

    def decode(self, z, return_dict=False):
        image = torch.zeros(z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8)
        return (image if self.dtype == torch.float32 else image * float("nan"),)


def test_nan_decode_switches_the_vae_to_float32_and_retries(tiny_model, caplog):
    import dataclasses

    from webui_api.engine.latents import decode_latents

    model = dataclasses.replace(tiny_model, vae=_OverflowingVae())
    images = decode_latents(model, torch.zeros(2, 4, 2, 2))
    assert model.vae.dtype == torch.float32
    assert images[0].getpixel((0, 0)) == (127, 127, 127)
    assert "NaN" in caplog.text
    stays = dataclasses.replace(tiny_model, vae=_OverflowingVae())
    decode_latents(stays, torch.zeros(1, 4, 2, 2), auto_upcast=False)
    assert stays.vae.dtype == torch.float16

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

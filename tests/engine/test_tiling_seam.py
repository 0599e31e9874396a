"""Seam continuity of `tiling`: with circular padding the whole txt2img pipeline (UNet and
VAE) treats the image as a torus, so a start noise rolled by half the width (or height)
gives the same picture rolled by half the width: the left/right (top/bottom) edges of the
picture meet in its middle with nothing to tell them apart from any other neighbouring
columns. Without tiling the same roll gives a different picture (zero padding marks the
edges), which is what makes the test able to fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from webui_api.engine.latents import decode_latents
from webui_api.engine.pipeline import BatchSpec, SamplingStart, resolve_plan, sample_batch
from webui_api.engine.tiling import apply_tiling
from webui_api.progress import CancelToken

LATENT_HALF = 4  # the tiny UNet downsamples twice: shifts must be multiples of 4 latent cells


def picture(model, tiling: bool, dims: int | None = None, seed: int = 1) -> np.ndarray:
    """A 64x64 Euler txt2img whose start noise is rolled by half the latent size along `dims`."""
    job = make_job(seeds=(seed,), steps=4, width=64, height=64)

    def start(noise, schedule):
        rolled = noise if dims is None else torch.roll(noise, LATENT_HALF, dims=dims)
        return SamplingStart(schedule, rolled * schedule[0])

    padding = apply_tiling(model, tiling)
    try:
        with torch.inference_mode():
            latents = sample_batch(model, job, resolve_plan(job), BatchSpec.of(job, 0), RecordingObserver(),
                                   CancelToken(), start)
            return np.asarray(decode_latents(model, latents)[0], np.float32)
    finally:
        padding.restore()


@pytest.mark.parametrize("latent_dim, pixel_axis", [(3, 1), (2, 0)])
def test_tiled_picture_wraps_around(tiny_model, latent_dim, pixel_axis):
    tiled = picture(tiny_model, True)
    rolled = picture(tiny_model, True, dims=latent_dim)
    assert np.abs(rolled - np.roll(tiled, 32, axis=pixel_axis)).max() <= 2  # uint8 rounding only
    plain = picture(tiny_model, False)
    plain_rolled = picture(tiny_model, False, dims=latent_dim)
    assert np.abs(plain_rolled - np.roll(plain, 32, axis=pixel_axis)).mean() > 10


def test_tiled_edges_join_like_interior_neighbours(tiny_model):
    """The seam between the last and first column of the tiled picture is, pixel for pixel,
    the pair of interior columns 31|32 of the half-rolled generation."""
    tiled = picture(tiny_model, True, seed=2)
    rolled = picture(tiny_model, True, dims=3, seed=2)
    seam = np.abs(tiled[:, -1] - tiled[:, 0])
    interior = np.abs(rolled[:, 31] - rolled[:, 32])
    assert np.abs(seam - interior).max() <= 4

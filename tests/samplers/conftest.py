"""Shared fixtures: the SD1.5 sigma table and an analytic toy denoiser."""

from __future__ import annotations

import pytest
import torch
from sampler_toys import GaussianDenoiser, sd15_alphas_cumprod

from samplers import schedules


@pytest.fixture(scope="session")
def sd15_sigmas() -> torch.Tensor:
    return schedules.sigma_table(sd15_alphas_cumprod())


@pytest.fixture
def toy_model() -> GaussianDenoiser:
    return GaussianDenoiser()


@pytest.fixture(scope="session")
def tiny_world(engine):
    """The embedded tiny SD1 model (the session engine's, built once for all test folders) and a
    two-image conditioning, shared by the parity tests: (model, cond (2, 77, C), uncond)."""
    from webui_api.engine.conditioning import encode_prompts

    model = engine.loaded
    with torch.inference_mode():
        cond = encode_prompts(model, ["a red cat", "a blue dog"])
        uncond = encode_prompts(model, ["", "blurry"])
    return model, cond, uncond

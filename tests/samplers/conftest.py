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

"""LCM (latent consistency models) sampling as A1111 v1.8+ does it.

LCM models are distilled on 50 "original" timesteps (every 20th training step, t = 19, 39,
..., 999). A1111 wraps the UNet in a dedicated denoiser whose sigma table has just those 50
entries, whose sigma -> timestep map is quantised to them, and whose output applies LCM's
boundary condition (see the engine's LCM denoiser). This module holds the table, the maps, the
default schedule and the sampler itself; all torch only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from samplers._common import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    as_args,
    check_sigmas,
    denoise,
    report,
    require_noise,
    sigma_levels,
)

ORIGINAL_STEPS = 50  # LCM's distillation timesteps
SIGMA_DATA = 0.5  # LCM boundary condition constant
TIMESTEP_SCALING = 10.0  # c_skip / c_out use 10 * t


def skip_steps(alphas_cumprod: torch.Tensor) -> int:
    """Training steps per LCM timestep (20 for the usual 1000)."""
    return alphas_cumprod.numel() // ORIGINAL_STEPS


def lcm_sigma_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The 50 sigmas at t = skip - 1, 2 * skip - 1, ..., N - 1, ascending, float32."""
    total, skip = alphas_cumprod.numel(), skip_steps(alphas_cumprod)
    valid = torch.zeros((ORIGINAL_STEPS,), dtype=torch.float32, device=alphas_cumprod.device)
    for x in range(ORIGINAL_STEPS):
        valid[ORIGINAL_STEPS - 1 - x] = alphas_cumprod[total - 1 - x * skip]
    return ((1 - valid) / valid) ** 0.5


def lcm_sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor, skip: int) -> torch.Tensor:
    """The training timestep of the nearest LCM sigma (int64), e.g. 999 for sigma_max."""
    dists = sigma.log() - log_sigmas[:, None]
    return dists.abs().argmin(dim=0).view(sigma.shape) * skip + (skip - 1)


def lcm_t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor, skip: int) -> torch.Tensor:
    """Sigma at a training timestep: LCM index (t - skip + 1) / skip, log-linear in between."""
    index = torch.clamp(((t - (skip - 1)) / skip).float(), min=0, max=(len(log_sigmas) - 1))
    low, high, w = index.floor().long(), index.ceil().long(), index.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def lcm_sigmas(n: int, sigma_table: torch.Tensor, skip: int) -> torch.Tensor:
    """LCM's own schedule ("Automatic"/"Uniform"): n timesteps evenly from 999 down to 19, then 0."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of sigmas n must be a positive int, got {n!r}")
    log_sigmas = sigma_table.log()
    start = lcm_sigma_to_t(sigma_table[-1], log_sigmas, skip)
    end = lcm_sigma_to_t(sigma_table[0], log_sigmas, skip)
    t = torch.linspace(start, end, n, device=sigma_table.device)
    sigmas = lcm_t_to_sigma(t, log_sigmas, skip)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


@torch.no_grad()
def sample_lcm(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Each step jumps to the model's x0 and, unless it is the last, re-noises to sigma_{i+1}."""
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "LCM")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if levels[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
    return x

"""Ancestral samplers: each step goes down past the target sigma, then adds fresh noise back.

Noise comes from ``noise_sampler(sigma_i, sigma_{i+1})``; no noise is added on the final step
into sigma = 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from samplers._common import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    ancestral_reaches_zero,
    ancestral_step,
    as_args,
    check_sigmas,
    denoise,
    report,
    require_noise,
    sigma_levels,
    sigma_of,
    t_of,
    to_d,
)
from samplers.kdiffusion import log_midpoint_step


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler step to sigma_down, then noise of size sigma_up ("Euler a")."""
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "Euler a")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if levels[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM2 midpoint step to sigma_down, then noise of size sigma_up ("DPM2 a")."""
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "DPM2 a")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if ancestral_reaches_zero(levels[i], levels[i + 1], eta):
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = log_midpoint_step(model, x, d, sigmas[i], sigma_down, args)
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2S) single-step second order to sigma_down, then noise ("DPM++ 2S a")."""
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "DPM++ 2S a")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if ancestral_reaches_zero(levels[i], levels[i + 1], eta):
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            x = _dpmpp_2s_step(model, x, denoised, sigmas[i], sigma_down, args)
        if levels[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _dpmpp_2s_step(
    model: Denoiser, x: Tensor, denoised: Tensor, sigma: Tensor, sigma_to: Tensor, args: Mapping[str, Any]
) -> Tensor:
    """One DPM-Solver++(2S) step in t = -log sigma, with the intermediate point at r = 1/2."""
    t, t_next = t_of(sigma), t_of(sigma_to)
    h = t_next - t
    s = t + 0.5 * h
    x_2 = (sigma_of(s) / sigma_of(t)) * x - (-h * 0.5).expm1() * denoised
    denoised_2 = denoise(model, x_2, sigma_of(s), args)
    return (sigma_of(t_next) / sigma_of(t)) * x - (-h).expm1() * denoised_2

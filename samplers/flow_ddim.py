"""DDIM, DDIM CFG++, PLMS and LCM for rectified-flow models (Flux, SD3), where x_s = (1 - s) * x0 + s * noise.

A1111 runs DDIM and PLMS on the discrete VP timesteps of an SD model (its ᾱ table) and LCM on
LCM's 50-entry sigma table; a flow model has neither. These forms walk the flow family's own
sigma schedule instead, with the flow model's alpha = 1 - s and sigma = s:

- DDIM: the DDIM update for a general (alpha, sigma) schedule, x' = alpha' x0 + sqrt(s'^2 - c^2)
  eps + c z with c = eta * s' * sqrt(1 - (alpha s' / (alpha' s))^2) (DDIM's posterior width; in
  VP form it is A1111's eta * sqrt((1 - ᾱ') / (1 - ᾱ) * (1 - ᾱ / ᾱ'))). At eta = 0 it is the
  flow Euler step, which is what ComfyUI's "ddim" (Euler under another name) runs.
- PLMS: Adams-Bashforth on the model's prediction with PLMS's fixed weights (first step a
  pseudo improved Euler, two model calls), then the deterministic DDIM step. The prediction
  combined is the flow velocity v = (x - x0) / s rather than eps: eps = (x - alpha x0) / s is
  undefined as an x0 estimate at s = 1, where DDIM's x0 = (x - s eps) / alpha divides by zero.
- DDIM CFG++: DDIM whose step direction is the unconditional noise estimate eps_u =
  (x - alpha x0_u) / s of the same call, with the guidance scale cut to cfg / 12.5 by the caller
  (A1111's CFG++ mapping), as A1111's DDIM CFG++ does with the unconditional eps.
- LCM: jump to the x0 estimate, then re-noise to the next sigma with the flow interpolation
  (1 - s') x0 + s' z (ComfyUI's LCM re-noises through the model's noise_scaling, which is this).

Every function keeps the k-diffusion signature and takes all its randomness from ``noise_sampler``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

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
from samplers.flow import rf_euler_to


class UncondAwareFlowModel(Protocol):
    """A flow denoiser that keeps the unconditional x0 estimate of its last call (the
    conditional one where it ran no CFG)."""

    last_uncond_x0: Tensor | None

    def __call__(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor: ...


# PLMS's Adams-Bashforth weights on (v_t, v_{t-1}, v_{t-2}, v_{t-3}) by how much history exists.
_PLMS_WEIGHTS = {1: ((3, -1), 2), 2: ((23, -16, 5), 12), 3: ((55, -59, 37, -9), 24)}


def ddim_noise_width(sigma: Tensor, sigma_next: Tensor, eta: float) -> Tensor:
    """DDIM's fresh-noise width c for one flow step from sigma to sigma_next (0 at eta = 0 and
    into sigma_next = 0): eta * s' * sqrt(1 - (alpha s' / (alpha' s))^2), alpha = 1 - s."""
    snr_ratio = (1 - sigma) * sigma_next / ((1 - sigma_next) * sigma)
    return eta * sigma_next * (1 - snr_ratio**2).clamp(min=0).sqrt()


def ddim_rf_step(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, eta: float,
                 noise: Tensor | None) -> Tensor:
    """One DDIM step on a flow model; with eta = 0 (or no noise) it is exactly the flow Euler step."""
    if eta == 0 or noise is None:
        return rf_euler_to(x, denoised, sigma, sigma_next)
    width = ddim_noise_width(sigma, sigma_next, eta)
    eps = (x - (1 - sigma) * denoised) / sigma
    return (1 - sigma_next) * denoised + (sigma_next**2 - width**2).clamp(min=0).sqrt() * eps + width * noise


@torch.no_grad()
def sample_ddim_rf(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
) -> Tensor:
    """"DDIM" on a flow model: one model call per step of the flow schedule; noise is drawn only
    when eta > 0 (then once per step that does not end at sigma 0)."""
    check_sigmas(sigmas)
    args, levels = as_args(extra_args), sigma_levels(sigmas)
    noise = require_noise(noise_sampler, "DDIM") if eta > 0 else None
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = denoised
            continue
        drawn = None if noise is None else noise(sigmas[i], sigmas[i + 1])
        x = ddim_rf_step(x, denoised, sigmas[i], sigmas[i + 1], eta, drawn)
    return x


def ddim_cfgpp_rf_step(x: Tensor, denoised: Tensor, uncond: Tensor, sigma: Tensor, sigma_next: Tensor, eta: float,
                       noise: Tensor | None) -> Tensor:
    """One DDIM CFG++ step on a flow model: the guided x0, the unconditional eps as direction."""
    eps = (x - (1 - sigma) * uncond) / sigma
    if eta == 0 or noise is None:
        return (1 - sigma_next) * denoised + sigma_next * eps
    width = ddim_noise_width(sigma, sigma_next, eta)
    return (1 - sigma_next) * denoised + (sigma_next**2 - width**2).clamp(min=0).sqrt() * eps + width * noise


@torch.no_grad()
def sample_ddim_cfgpp_rf(
    model: UncondAwareFlowModel,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
) -> Tensor:
    """"DDIM CFG++" on a flow model (the caller runs the model's CFG at cfg_scale / 12.5)."""
    check_sigmas(sigmas)
    args, levels = as_args(extra_args), sigma_levels(sigmas)
    noise = require_noise(noise_sampler, "DDIM CFG++") if eta > 0 else None
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = denoised
            continue
        uncond = getattr(model, "last_uncond_x0", None)
        if uncond is None:
            raise ValueError("DDIM CFG++ needs the model's unconditional x0 estimate (last_uncond_x0), got None")
        drawn = None if noise is None else noise(sigmas[i], sigmas[i + 1])
        x = ddim_cfgpp_rf_step(x, denoised, uncond, sigmas[i], sigmas[i + 1], eta, drawn)
    return x


def plms_velocity(v: Tensor, history: list[Tensor]) -> Tensor:
    """PLMS's Adams-Bashforth combination of the current and up to three previous velocities."""
    weights, divisor = _PLMS_WEIGHTS[len(history)]
    total = weights[0] * v
    for k, weight in enumerate(weights[1:], start=1):
        total = total + weight * history[-k]
    return total / divisor


@torch.no_grad()
def sample_plms_rf(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """"PLMS" on a flow model: a pseudo improved-Euler first step (two model calls; one when it
    ends at sigma 0), then velocity Adams-Bashforth of order 2, 3 and 4. Deterministic."""
    check_sigmas(sigmas)
    args, levels = as_args(extra_args), sigma_levels(sigmas)
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(model, x, sigma, args)
        report(callback, x, i, sigma, sigma, denoised)
        v = (x - denoised) / sigma
        if history:
            v_step = plms_velocity(v, history)
        elif levels[i + 1] == 0:
            v_step = v
        else:
            x_next = x + (sigma_next - sigma) * v
            v_step = (v + (x_next - denoise(model, x_next, sigma_next, args)) / sigma_next) / 2
        x = x + (sigma_next - sigma) * v_step
        history = (history + [v])[-3:]
    return x


@torch.no_grad()
def sample_lcm_rf(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """"LCM" on a flow model: each step jumps to the x0 estimate and, unless the next sigma is 0,
    re-noises it onto the flow marginal there: (1 - s') x0 + s' z."""
    check_sigmas(sigmas)
    args, levels = as_args(extra_args), sigma_levels(sigmas)
    noise = require_noise(noise_sampler, "LCM")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if levels[i + 1] > 0:
            x = (1 - sigmas[i + 1]) * x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
    return x

"""Ancestral and SDE samplers for rectified-flow models (Flux, SD3), where x_s = (1 - s) * x0 + s * noise.

k-diffusion's noisy samplers assume the variance-exploding form x = x0 + sigma * noise: an
ancestral step adds fresh noise of size sigma_up on top of a step to sigma_down, and the
DPM-Solver++ SDE steps work in t = -log(sigma). On a flow model both would leave x off the
model's marginal (too much noise, the data part never shrinks). ComfyUI's k-diffusion (and the
Forge forks that carry it) switch these samplers to rectified-flow forms when the model samples
the "const" way; upstream Forge's own k-diffusion copy does not. These are those flow forms:

- Ancestral ("Euler a", "DPM2 a", "DPM++ 2S a"): step deterministically to
  sigma_down = s' * (1 + (s'/s - 1) * eta), then scale x by alpha'/alpha_down (alpha = 1 - sigma)
  and add noise of standard deviation sqrt(s'^2 - sigma_down^2 * alpha'^2 / alpha_down^2), which
  puts x back on the marginal at s'. eta = 0 is the plain flow Euler (DDIM) step.
- SDE ("DPM++ SDE", "DPM++ 2M SDE" [Heun], "DPM++ 3M SDE"): DPM-Solver++ in the half log-SNR
  lambda = log(alpha / sigma) = log((1 - s) / s), with alpha = 1 - s in every update. lambda is
  infinite at s = 1, so these need a first sigma below 1 (`first_sigma_below_one`).

The deterministic samplers (Euler, Heun, DPM++ 2M, LMS, DPM2) only ever see the x0 estimate and
run on flow models unchanged. Every function keeps the k-diffusion signature and takes all its
randomness from ``noise_sampler``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from samplers._common import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    ancestral_step,
    as_args,
    check_sigmas,
    denoise,
    report,
    require_noise,
    sigma_levels,
    to_d,
)
from samplers.kdiffusion import log_midpoint_step

FIRST_STEP_OFFSET = 1e-4  # ComfyUI's offset_first_sigma_for_snr: the sigma at timestep 1 - 1e-4
MIDPOINT_AT_ONE = 0.9999  # DPM++ 2S a's intermediate sigma when it starts at sigma = 1 (lambda = -inf)


# ---------------------------------------------------------------------------
# Step pieces
# ---------------------------------------------------------------------------


def rf_ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor, Tensor]:
    """(sigma_down, scale, noise_std) of one flow ancestral step from sigma to sigma_next > 0.

    After the deterministic step to sigma_down, x = scale * x + noise_std * noise lands on the
    marginal at sigma_next: (1 - s') x0 + s' noise. sigma_down is clamped at 0 for eta so large
    that it would go negative (then the step is a full renoise of the x0 estimate).
    """
    sigma_down = (sigma_next * (1 + (sigma_next / sigma - 1) * eta)).clamp(min=0)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    variance = sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2
    return sigma_down, alpha_next / alpha_down, variance.clamp(min=0).sqrt()


def rf_euler_to(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_to: Tensor) -> Tensor:
    """The flow Euler (= DDIM) step: keep the noise estimate, move to sigma_to."""
    ratio = sigma_to / sigma
    return ratio * x + (1 - ratio) * denoised


def half_log_snr(sigma: Tensor) -> Tensor:
    """lambda = log((1 - sigma) / sigma) of a flow model (+inf at 0, -inf at 1)."""
    return sigma.logit().neg()


def sigma_of_half_log_snr(lam: Tensor) -> Tensor:
    """Inverse of ``half_log_snr``: sigma = 1 / (1 + e^lambda)."""
    return lam.neg().sigmoid()


def first_sigma_below_one(sigmas: Tensor, top_sigma: float) -> Tensor:
    """The schedule with a first sigma of 1 (or more) replaced by `top_sigma` (the model's sigma at
    timestep 1 - FIRST_STEP_OFFSET), as Forge does for the half-log-SNR samplers; x itself stays
    the pure noise it was started from."""
    if not 0 < top_sigma < 1:
        raise ValueError(f"top_sigma must lie strictly between 0 and 1, got {top_sigma!r}")
    if len(sigmas) < 2 or float(sigmas[0]) < 1:
        return sigmas
    out = sigmas.clone()
    out[0] = top_sigma
    return out


def _check_below_one(sigmas: Tensor, name: str) -> None:
    if float(sigmas.max()) >= 1:
        raise ValueError(
            f"{name} on a flow model needs sigmas below 1 (lambda is infinite at 1); "
            "pass the schedule through first_sigma_below_one"
        )


def _renoise(x: Tensor, scale: Tensor, noise_std: Tensor, noise: Tensor, s_noise: float) -> Tensor:
    return scale * x + noise * s_noise * noise_std


# ---------------------------------------------------------------------------
# Ancestral samplers
# ---------------------------------------------------------------------------


@torch.no_grad()
def sample_euler_ancestral_rf(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """"Euler a" on a flow model: flow Euler to sigma_down, then the flow renoise."""

    def euler(x: Tensor, denoised: Tensor, step: _DownStep) -> Tensor:
        return rf_euler_to(x, denoised, step.sigma, step.sigma_down)

    return _ancestral_loop(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, "Euler a", euler,
                           renoise_at_eta_zero=False)


@torch.no_grad()
def sample_dpm_2_ancestral_rf(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """"DPM2 a" on a flow model: the DPM2 midpoint step to sigma_down, then the flow renoise."""
    args = as_args(extra_args)

    def midpoint(x: Tensor, denoised: Tensor, step: _DownStep) -> Tensor:
        return log_midpoint_step(model, x, to_d(x, step.sigma, denoised), step.sigma, step.sigma_down, args)

    return _ancestral_loop(model, x, sigmas, args, callback, noise_sampler, eta, s_noise, "DPM2 a", midpoint,
                           renoise_at_eta_zero=True)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_rf(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """"DPM++ 2S a" on a flow model: a second model call halfway (in lambda) to sigma_down, the
    flow step to sigma_down from that estimate, then the flow renoise."""
    args = as_args(extra_args)

    def second_order(x: Tensor, denoised: Tensor, step: _DownStep) -> Tensor:
        sigma_mid = _lambda_midpoint(step.sigma, step.sigma_down, step.starts_at_one)
        denoised_2 = denoise(model, rf_euler_to(x, denoised, step.sigma, sigma_mid), sigma_mid, args)
        return rf_euler_to(x, denoised_2, step.sigma, step.sigma_down)

    return _ancestral_loop(model, x, sigmas, args, callback, noise_sampler, eta, s_noise, "DPM++ 2S a",
                           second_order, renoise_at_eta_zero=False)


@dataclass(frozen=True)
class _DownStep:
    """The deterministic part of one ancestral step: from sigma to sigma_down (> 0)."""

    sigma: Tensor
    sigma_down: Tensor
    starts_at_one: bool  # decided on the host copy of the schedule


def _ancestral_loop(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: Mapping[str, Any] | None,
    callback: StepCallback | None, noise_sampler: NoiseSampler | None, eta: float, s_noise: float, name: str,
    step_down: Callable[[Tensor, Tensor, _DownStep], Tensor], renoise_at_eta_zero: bool,
) -> Tensor:
    """The loop the flow ancestral samplers share: denoise, the sampler's own step to sigma_down
    (the x0 estimate itself where sigma_down is 0), then the flow renoise to the next sigma. The
    branches read a host copy of the schedule taken once before the loop, not the device."""
    check_sigmas(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, name)
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = denoised
            continue
        sigma_down, scale, noise_std = rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if _reaches_zero(levels[i], levels[i + 1], eta, sigmas.dtype):
            x = denoised
        else:
            x = step_down(x, denoised, _DownStep(sigmas[i], sigma_down, levels[i] >= 1))
        if renoise_at_eta_zero or eta > 0:
            x = _renoise(x, scale, noise_std, noise(sigmas[i], sigmas[i + 1]), s_noise)
    return x


def _reaches_zero(sigma: float, sigma_next: float, eta: float, dtype: torch.dtype) -> bool:
    """Whether rf_ancestral_step's sigma_down is 0, computed on the host in the schedule's dtype."""
    host = rf_ancestral_step(torch.tensor(sigma, dtype=dtype), torch.tensor(sigma_next, dtype=dtype), eta)
    return bool(host[0] == 0)


def _lambda_midpoint(sigma: Tensor, sigma_to: Tensor, starts_at_one: bool) -> Tensor:
    """The sigma halfway between two sigmas in half log-SNR (a fixed 0.9999 from sigma = 1)."""
    if starts_at_one:
        return torch.full_like(sigma, MIDPOINT_AT_ONE)
    lam, lam_to = half_log_snr(sigma), half_log_snr(sigma_to)
    return sigma_of_half_log_snr(lam + 0.5 * (lam_to - lam))


# ---------------------------------------------------------------------------
# SDE samplers (half log-SNR)
# ---------------------------------------------------------------------------


@torch.no_grad()
def sample_dpmpp_sde_rf(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> Tensor:
    """"DPM++ SDE" on a flow model: two stochastic exponential-integrator stages per step in
    lambda, the ancestral split done on sigma/alpha; the last step returns the x0 estimate."""
    check_sigmas(sigmas)
    _check_below_one(sigmas, "DPM++ SDE")
    args, noise = as_args(extra_args), require_noise(noise_sampler, "DPM++ SDE")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam, lam_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        sigma_mid = sigma_of_half_log_snr(lam + r * (lam_next - lam))
        x_2 = _sde_stage(x, denoised, sigmas[i], sigma_mid, eta, noise, s_noise)
        denoised_2 = denoise(model, x_2, sigma_mid, args)
        fac = 1 / (2 * r)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = _sde_stage(x, denoised_d, sigmas[i], sigmas[i + 1], eta, noise, s_noise)
    return x


def _sde_stage(
    x: Tensor, denoised: Tensor, sigma: Tensor, sigma_to: Tensor, eta: float, noise: NoiseSampler, s_noise: float
) -> Tensor:
    """From sigma towards sigma_to: the ancestral split of the variance-exploding sigma/alpha
    (= e^-lambda), a first-order step to the down point, and noise scaled by alpha_to."""
    lam = half_log_snr(sigma)
    down, up = ancestral_step(lam.neg().exp(), half_log_snr(sigma_to).neg().exp(), eta)
    h = down.log().neg() - lam
    alpha, alpha_to = 1 - sigma, 1 - sigma_to
    x = (alpha_to / alpha) * (-h).exp() * x - alpha_to * (-h).expm1() * denoised
    if eta > 0 and s_noise > 0:
        x = x + alpha_to * noise(sigma, sigma_to) * s_noise * up
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_rf(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """"DPM++ 2M SDE" (``solver_type`` "heun": "DPM++ 2M SDE Heun") on a flow model."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    return _multistep_sde(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, solver_type)


@torch.no_grad()
def sample_dpmpp_3m_sde_rf(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """"DPM++ 3M SDE" on a flow model: third order from the two previous x0 estimates."""
    return _multistep_sde(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, "3m")


def _multistep_sde(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: Mapping[str, Any] | None, callback: StepCallback | None,
    noise_sampler: NoiseSampler | None, eta: float, s_noise: float, variant: str,
) -> Tensor:
    """The 2M / 3M SDE loop: history of x0 estimates and lambda steps; the last step returns x0."""
    check_sigmas(sigmas)
    name = "DPM++ 3M SDE" if variant == "3m" else "DPM++ 2M SDE"
    _check_below_one(sigmas, name)
    args, noise = as_args(extra_args), require_noise(noise_sampler, name)
    history: list[tuple[Tensor, Tensor]] = []  # (denoised, h), newest first
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = half_log_snr(sigmas[i + 1]) - half_log_snr(sigmas[i])
        x = _multistep_update(x, denoised, history, sigmas[i], sigmas[i + 1], h, eta, variant)
        if eta > 0 and s_noise > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        history = [(denoised, h), *history][:2]
    return x


def _multistep_update(
    x: Tensor, denoised: Tensor, history: list[tuple[Tensor, Tensor]], sigma: Tensor, sigma_next: Tensor,
    h: Tensor, eta: float, variant: str,
) -> Tensor:
    """The deterministic part of a 2M / 3M SDE step with the corrections the history allows."""
    h_eta = h * (eta + 1)
    alpha_next = 1 - sigma_next
    phi_1 = (-h_eta).expm1().neg()
    x = sigma_next / sigma * (-h * eta).exp() * x + alpha_next * phi_1 * denoised
    if not history:
        return x
    denoised_1, h_1 = history[0]
    r = h_1 / h
    if variant == "midpoint":
        return x + 0.5 * alpha_next * phi_1 * (1 / r) * (denoised - denoised_1)
    phi_2 = phi_1 / -h_eta + 1  # = expm1(-h_eta) / h_eta + 1
    if variant == "heun":
        return x + alpha_next * phi_2 * (1 / r) * (denoised - denoised_1)
    if len(history) < 2:  # 3M with one previous estimate: the 2M correction
        return x + alpha_next * phi_2 * ((denoised - denoised_1) / r)
    denoised_2, h_2 = history[1]
    r0, r1 = h_1 / h, h_2 / h
    d1_0 = (denoised - denoised_1) / r0
    d1_1 = (denoised_1 - denoised_2) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_3 = phi_2 / h_eta - 0.5
    return x + alpha_next * phi_2 * d1 - alpha_next * phi_3 * d2

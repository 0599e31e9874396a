"""DPM-Solver++ multistep and SDE samplers (Lu et al. 2022), in k-diffusion's formulation.

Work happens in t = -log(sigma) with the data prediction ("denoised"). The SDE variants get
their noise from ``noise_sampler``; A1111 hands them a Brownian-tree sampler seeded per image,
which is the caller's business here.
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

SOLVER_TYPES = ("midpoint", "heun")

# DPM++ 3M SDE history: denoised_1, denoised_2, h_1, h_2 (None until that many steps ran)
_History3M = tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): second order from the previous step's denoised; first and last steps are first order.

    Deterministic: noise_sampler is accepted for the common signature and never called.
    """
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args = as_args(extra_args)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = t_of(sigmas[i]), t_of(sigmas[i + 1])
        h = t_next - t
        if old_denoised is not None and levels[i + 1] != 0:
            r = (t - t_of(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        else:
            denoised_d = denoised
        x = (sigma_of(t_next) / sigma_of(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic, "DPM++ SDE"): two ancestral half-steps per step; Euler into sigma = 0."""
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "DPM++ SDE")
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            noise_times = _sde_noise_times(levels[i], levels[i + 1], r)
            x = _dpmpp_sde_step(model, x, denoised, sigmas[i], sigmas[i + 1], args, noise, noise_times,
                                (eta, s_noise, r))
    return x


def _sde_noise_times(level: float, level_next: float, r: float) -> tuple[Tensor, Tensor, Tensor]:
    """The sigmas the step queries the noise at (t, s = t + r*h, t_next, through sigma(t(.))), computed
    from the host copy of the schedule with the same float32 operations as the step's own: the Brownian
    tree needs them on the host, and reading them off the device would wait for the GPU every step."""
    t, t_next = t_of(torch.tensor(level)), t_of(torch.tensor(level_next))
    s = t + (t_next - t) * r
    return sigma_of(t), sigma_of(s), sigma_of(t_next)


def _dpmpp_sde_step(
    model: Denoiser, x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, args: Mapping[str, Any],
    noise: NoiseSampler, noise_times: tuple[Tensor, Tensor, Tensor], tuning: tuple[float, float, float],
) -> Tensor:
    """Stage 1 goes to the intermediate time s = t + r*h; stage 2 combines both denoised values.
    ``noise_times`` are host copies of sigma(t), sigma(s), sigma(t_next) for the noise sampler."""
    eta, s_noise, r = tuning
    noise_t, noise_s, noise_next = noise_times
    t, t_next = t_of(sigma), t_of(sigma_next)
    s = t + (t_next - t) * r
    x_2 = _ancestral_exp_step(x, denoised, t, s, eta, noise(noise_t, noise_s) * s_noise)
    denoised_2 = denoise(model, x_2, sigma_of(s), args)
    fac = 1 / (2 * r)
    denoised_d = (1 - fac) * denoised + fac * denoised_2
    return _ancestral_exp_step(x, denoised_d, t, t_next, eta, noise(noise_t, noise_next) * s_noise)


def _ancestral_exp_step(
    x: Tensor, denoised: Tensor, t: Tensor, t_to: Tensor, eta: float, scaled_noise: Tensor
) -> Tensor:
    """First-order exponential-integrator step from t towards t_to, with ancestral noise."""
    sd, su = ancestral_step(sigma_of(t), sigma_of(t_to), eta)
    t_down = t_of(sd)
    x = (sigma_of(t_down) / sigma_of(t)) * x - (t - t_down).expm1() * denoised
    return x + scaled_noise * su


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE; ``solver_type`` "heun" is A1111's "DPM++ 2M SDE Heun". Last step returns denoised."""
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "DPM++ 2M SDE")
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = denoised
        else:
            h = t_of(sigmas[i + 1]) - t_of(sigmas[i])
            x = _sde_2m_update(x, denoised, old_denoised, sigmas[i], sigmas[i + 1], h, h_last, eta, solver_type)
            if eta:
                x = x + noise(levels[i], levels[i + 1]) * sigmas[i + 1] * _sde_noise_factor(-2 * (eta * h)) * s_noise
        old_denoised, h_last = denoised, h
    return x


def _sde_2m_update(
    x: Tensor, denoised: Tensor, old_denoised: Tensor | None, sigma: Tensor, sigma_next: Tensor, h: Tensor,
    h_last: Tensor | None, eta: float, solver_type: str,
) -> Tensor:
    """Deterministic part of a 2M SDE step, plus the second-order correction once history exists."""
    eta_h = eta * h
    x = sigma_next / sigma * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
    if old_denoised is None or h_last is None:  # the first step (they are set together)
        return x
    r = h_last / h
    phi_1 = (-h - eta_h).expm1().neg()
    if solver_type == "heun":
        return x + (phi_1 / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
    return x + 0.5 * phi_1 * (1 / r) * (denoised - old_denoised)


def _sde_noise_factor(minus_two_eta_h: torch.Tensor) -> torch.Tensor:
    """sqrt(1 - exp(-2 eta h)): the injected noise's standard deviation relative to sigma_next.

    The argument is precomputed by each caller because upstream forms it in different orders
    (2M: -2 * (eta * h), 3M: (-2 * h) * eta) and we keep the float32 rounding identical.
    """
    return minus_two_eta_h.expm1().neg().sqrt()


@torch.no_grad()
def sample_dpmpp_3m_sde(
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
    """DPM-Solver++(3M) SDE: third order from two previous denoised values. Last step returns denoised."""
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "DPM++ 3M SDE")
    history: _History3M = (None, None, None, None)  # denoised_1, denoised_2, h_1, h_2
    h = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = denoised
        else:
            h = t_of(sigmas[i + 1]) - t_of(sigmas[i])
            x = _sde_3m_update(x, denoised, history, h, eta)
            if eta:
                x = x + noise(levels[i], levels[i + 1]) * sigmas[i + 1] * _sde_noise_factor(-2 * h * eta) * s_noise
        history = (denoised, history[0], h, history[2])
    return x


def _sde_3m_update(x: Tensor, denoised: Tensor, history: _History3M, h: Tensor, eta: float) -> Tensor:
    """Deterministic part of a 3M SDE step, with as many correction terms as the history allows."""
    denoised_1, denoised_2, h_1, h_2 = history
    h_eta = h * (eta + 1)
    x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
    phi_2 = h_eta.neg().expm1() / h_eta + 1
    if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
        r0, r1 = h_1 / h, h_2 / h
        d1_0 = (denoised - denoised_1) / r0
        d1_1 = (denoised_1 - denoised_2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
    if h_1 is not None and denoised_1 is not None:
        return x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
    return x

"""Deterministic-ODE samplers with optional Karras churn: Euler, Heun, DPM2, and LMS.

Euler, Heun and DPM2 draw one noise tensor from ``noise_sampler`` on **every** step, even with
s_churn = 0 where it goes unused: A1111 does the same, and the draw advances the per-image RNG
streams, so skipping it would change every later random number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from samplers._common import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    as_args,
    check_sigmas,
    churn_gamma,
    denoise,
    report,
    require_noise,
    sigma_levels,
    to_d,
)


def _churn(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    levels: list[float],
    i: int,
    noise_sampler: NoiseSampler,
    churn: tuple[float, float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw this step's noise (always) and raise sigma_i to sigma_hat by adding it (if gamma > 0)."""
    s_churn, s_tmin, s_tmax, s_noise = churn
    gamma = churn_gamma(levels, i, s_churn, s_tmin, s_tmax)
    eps = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2 with churn)."""
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "Euler")
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, levels, i, noise, churn)
        denoised = denoise(model, x, sigma_hat, args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022); an Euler step into sigma = 0."""
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "Heun")
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, levels, i, noise, churn)
        denoised = denoise(model, x, sigma_hat, args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if levels[i + 1] == 0:
            x = x + d * dt
        else:
            x = _heun_correct(model, x, d, dt, sigmas[i + 1], args)
    return x


def _heun_correct(
    model: Denoiser, x: Tensor, d: Tensor, dt: Tensor, sigma_next: Tensor, args: Mapping[str, Any]
) -> Tensor:
    """Trapezoidal step: average the slopes at both ends of an Euler predictor."""
    x_2 = x + d * dt
    d_2 = to_d(x_2, sigma_next, denoise(model, x_2, sigma_next, args))
    return x + (d + d_2) / 2 * dt


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver-2-style midpoint steps (midpoint in log sigma); an Euler step into sigma = 0."""
    check_sigmas(sigmas)
    levels = sigma_levels(sigmas)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "DPM2")
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, levels, i, noise, churn)
        denoised = denoise(model, x, sigma_hat, args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if levels[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            x = log_midpoint_step(model, x, d, sigma_hat, sigmas[i + 1], args)
    return x


def log_midpoint_step(
    model: Denoiser, x: Tensor, d: Tensor, sigma_from: Tensor, sigma_to: Tensor, args: Mapping[str, Any]
) -> Tensor:
    """Go from sigma_from to sigma_to using the slope at their geometric mean."""
    sigma_mid = sigma_from.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma_from)
    d_2 = to_d(x_2, sigma_mid, denoise(model, x_2, sigma_mid, args))
    return x + d_2 * (sigma_to - sigma_from)


# ---------------------------------------------------------------------------
# LMS
# ---------------------------------------------------------------------------

# The 21-point Gauss-Kronrod rule of QUADPACK's QK21 (abscissae x_k on [0, 1), weights w_k).
# k-diffusion integrates the LMS basis polynomials with scipy's adaptive quad, which for these
# low-degree polynomials accepts its first QK21 evaluation; evaluating the same rule in the same
# summation order reproduces its coefficients to the last bit, so LMS latents match upstream.
_QK21_X = (
    0.995657163025808080735527280689003, 0.973906528517171720077964012084452,
    0.930157491355708226001207180059508, 0.865063366688984510732096688423493,
    0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
    0.562757134668604683339000099272694, 0.433395394129247190799265943165784,
    0.294392862701460198131126603103866, 0.148874338981631210884826001129720,
    0.0,
)
_QK21_W = (
    0.011694638867371874278064396062192, 0.032558162307964727478818972459390,
    0.054755896574351996031381300244580, 0.075039674810919952767043140916190,
    0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
    0.123491976262065851077208980108580, 0.134709217311473325928054001771707,
    0.142775938577060080797094273138717, 0.147739104901338491374841515972068,
    0.149445554002916905664936468389821,
)
# QK21 sums the Gauss abscissae (odd 1-based indices 2, 4, ..., 10) first, then the Kronrod ones.
_QK21_ORDER = (1, 3, 5, 7, 9, 0, 2, 4, 6, 8)


def kronrod21(fn: Callable[[float], float], a: float, b: float) -> float:
    """Integral of fn over [a, b] by the 21-point Gauss-Kronrod rule (exact for degree <= 31)."""
    centre, half = 0.5 * (a + b), 0.5 * (b - a)
    total = _QK21_W[10] * fn(centre)
    for k in _QK21_ORDER:
        offset = half * _QK21_X[k]
        total = total + _QK21_W[k] * (fn(centre - offset) + fn(centre + offset))
    return total * half


def lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial for node t_{i-j}."""
    if order - 1 > i:
        raise ValueError(f"LMS order {order} is too high for step {i}: only {i + 1} past derivatives exist")
    nodes = [float(t[i - k]) for k in range(order)]

    def basis(tau: float) -> float:
        value = 1.0
        for k, node in enumerate(nodes):
            if k != j:
                value *= (tau - node) / (nodes[j] - node)
        return value

    return kronrod21(basis, float(t[i]), float(t[i + 1]))


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth on the sigma grid) of up to ``order`` past derivatives.

    Deterministic: noise_sampler is accepted for the common signature and never called.
    """
    check_sigmas(sigmas)
    args = as_args(extra_args)
    sigmas_np = sigmas.detach().cpu().numpy().astype(np.float64)
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoise(model, x, sigmas[i], args)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [lms_coefficient(cur_order, sigmas_np, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=False))
    return x

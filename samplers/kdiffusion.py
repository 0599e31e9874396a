"""Deterministic-ODE samplers with optional Karras churn: Euler, Heun, DPM2, and LMS.

Euler, Heun and DPM2 draw one noise tensor from ``noise_sampler`` on **every** step, even with
s_churn = 0 where it goes unused: A1111 does the same, and the draw advances the per-image RNG
streams, so skipping it would change every later random number.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from samplers._common import (
    NoiseSampler,
    StepCallback,
    as_args,
    check_sigmas,
    churn_gamma,
    denoise,
    report,
    require_noise,
    to_d,
)


def _churn(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    i: int,
    noise_sampler: NoiseSampler,
    churn: tuple[float, float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw this step's noise (always) and raise sigma_i to sigma_hat by adding it (if gamma > 0)."""
    s_churn, s_tmin, s_tmax, s_noise = churn
    gamma = churn_gamma(sigmas, i, s_churn, s_tmin, s_tmax)
    eps = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(
    model,
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
    args, noise = as_args(extra_args), require_noise(noise_sampler, "Euler")
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, churn)
        denoised = denoise(model, x, sigma_hat, args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_heun(
    model,
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
    args, noise = as_args(extra_args), require_noise(noise_sampler, "Heun")
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, churn)
        denoised = denoise(model, x, sigma_hat, args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x = _heun_correct(model, x, d, dt, sigmas[i + 1], args)
    return x


def _heun_correct(model, x, d, dt, sigma_next, args) -> torch.Tensor:
    """Trapezoidal step: average the slopes at both ends of an Euler predictor."""
    x_2 = x + d * dt
    d_2 = to_d(x_2, sigma_next, denoise(model, x_2, sigma_next, args))
    return x + (d + d_2) / 2 * dt


@torch.no_grad()
def sample_dpm_2(
    model,
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
    args, noise = as_args(extra_args), require_noise(noise_sampler, "DPM2")
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, churn)
        denoised = denoise(model, x, sigma_hat, args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            x = log_midpoint_step(model, x, d, sigma_hat, sigmas[i + 1], args)
    return x


def log_midpoint_step(model, x, d, sigma_from, sigma_to, args) -> torch.Tensor:
    """Go from sigma_from to sigma_to using the slope at their geometric mean."""
    sigma_mid = sigma_from.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma_from)
    d_2 = to_d(x_2, sigma_mid, denoise(model, x_2, sigma_mid, args))
    return x + d_2 * (sigma_to - sigma_from)


# ---------------------------------------------------------------------------
# LMS
# ---------------------------------------------------------------------------

# Gauss-Legendre with 8 nodes integrates polynomials up to degree 15 exactly; LMS integrands are
# Lagrange basis polynomials of degree order - 1 <= 3, so this matches adaptive quadrature.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)


def lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial for node t_{i-j}."""
    if order - 1 > i:
        raise ValueError(f"LMS order {order} is too high for step {i}: only {i + 1} past derivatives exist")
    nodes = [t[i - k] for k in range(order)]
    half = 0.5 * (t[i + 1] - t[i])
    taus = half * _GL_NODES + 0.5 * (t[i + 1] + t[i])
    basis = np.ones_like(taus)
    for k, node in enumerate(nodes):
        if k != j:
            basis = basis * (taus - node) / (nodes[j] - node)
    return float(half * np.dot(_GL_WEIGHTS, basis))


@torch.no_grad()
def sample_lms(
    model,
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
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x

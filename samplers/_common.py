"""Small pieces shared by the sampler functions.

The samplers reproduce k-diffusion's numerics (as pinned by A1111), so these helpers keep
upstream's operation order and dtypes: sigmas stay 0-dim float32 tensors, never Python floats.

The loops' *branches* (is the next sigma 0? is this sigma in the churn range?) read the schedule
from `sigma_levels`, a host copy taken once before the loop: a comparison on a CUDA tensor
(`if sigmas[i + 1] == 0`) would wait for the GPU to finish every queued step, so the host could
never run ahead of the device. The float32 values are exact as Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

Denoiser = Callable[..., torch.Tensor]
NoiseSampler = Callable[[torch.Tensor | float, torch.Tensor | float], torch.Tensor]  # (sigma, sigma_next) -> noise
StepCallback = Callable[[dict[str, Any]], None]

MAX_CHURN_GAMMA = 2**0.5 - 1  # Karras et al.: more churn than this would more than double sigma


def as_args(extra_args: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Samplers accept extra_args=None for convenience; the model always gets a mapping."""
    return {} if extra_args is None else extra_args


def check_sigmas(sigmas: torch.Tensor) -> None:
    """Reject schedules the loops cannot walk: they need a 1-D tensor of at least two values."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas must be a 1-D tensor with at least 2 values, got {shape}")


def require_noise(noise_sampler: NoiseSampler | None, sampler_name: str) -> NoiseSampler:
    """Stochastic samplers take all randomness from the caller, never from the global torch RNG."""
    if noise_sampler is None:
        raise ValueError(
            f"{sampler_name} draws noise and needs a noise_sampler(sigma, sigma_next) -> Tensor, got None"
        )
    return noise_sampler


def denoise(model: Denoiser, x: torch.Tensor, sigma: torch.Tensor, extra_args: Mapping[str, Any]) -> torch.Tensor:
    """Call the denoiser with one sigma per batch row, as k-diffusion does."""
    return model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative dx/dsigma (A1111's variant: a scalar sigma, no broadcasting step)."""
    return (x - denoised) / sigma


def report(
    callback: StepCallback | None,
    x: torch.Tensor,
    i: int,
    sigma: torch.Tensor,
    sigma_hat: torch.Tensor,
    denoised: torch.Tensor,
) -> None:
    """Tell the caller (progress, previews, cancellation) about step i's model evaluation."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Split a step into a deterministic part down to sigma_down and fresh noise of size sigma_up.

    sigma_down**2 + sigma_up**2 == sigma_to**2; eta = 0 makes the step fully deterministic.
    """
    if not eta:
        return sigma_to, 0.0
    bound = eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    # torch.minimum, not min(): min() compares (a host sync on CUDA); the value is the same operand
    sigma_up = torch.minimum(sigma_to, bound) if isinstance(bound, torch.Tensor) else min(sigma_to, bound)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def sigma_levels(sigmas: torch.Tensor) -> list[float]:
    """The schedule as Python floats for the loops' branches: one device-to-host copy before the
    loop instead of a sync per step (see the module docstring)."""
    return sigmas.detach().tolist()


def ancestral_reaches_zero(sigma_from: float, sigma_to: float, eta: float) -> bool:
    """Whether `ancestral_step(sigma_from, sigma_to, eta)` gives sigma_down == 0, decided on the
    host: the same float32 operations in the same order (numpy's float32 arithmetic rounds as
    torch's does, and x ** 0.5 is a correctly rounded square root in both)."""
    if not eta:
        return sigma_to == 0
    f, t = np.float32(sigma_from), np.float32(sigma_to)
    bound = np.float32(eta) * np.sqrt(np.float32(t * t * (f * f - t * t) / (f * f)))
    up = t if not bound < t else bound
    return bool(t * t - up * up == 0)


def t_of(sigma: torch.Tensor) -> torch.Tensor:
    """DPM-Solver time: t = -log(sigma)."""
    return sigma.log().neg()


def sigma_of(t: torch.Tensor) -> torch.Tensor:
    """Inverse of ``t_of``: sigma = exp(-t)."""
    return t.neg().exp()


def churn_gamma(levels: Sequence[float], i: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras "churn": how much to raise sigma_i before the step (0 outside [s_tmin, s_tmax]);
    `levels` is the schedule on the host (`sigma_levels`)."""
    if s_tmin <= levels[i] <= s_tmax:
        return min(s_churn / (len(levels) - 1), MAX_CHURN_GAMMA)
    return 0.0


def check_finite_nonneg(name: str, value: float) -> None:
    """Tuning values come from requests; NaN or negative values would silently corrupt sampling."""
    if not (isinstance(value, (int, float)) and not math.isnan(value) and value >= 0):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")

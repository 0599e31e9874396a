"""Helpers for the sampler tests: SD1.5 constants, an analytic toy denoiser, a recording noise sampler."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SD15_SIGMA_MIN = 0.029167533
SD15_SIGMA_MAX = 14.614642


def sd15_alphas_cumprod() -> torch.Tensor:
    """scaled_linear betas 0.00085..0.012, cumprod in float64, stored float32 (as A1111 does)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


@dataclass(frozen=True)
class GaussianDenoiser:
    """Exact denoiser for data ~ N(mean, std^2) per element: E[x0 | x_sigma] in closed form.

    Its probability-flow ODE has the closed-form solution used by ``ode_solution``.
    """

    mean: float = 0.5
    std: float = 0.3

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: object) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.mean + self.std**2 / (self.std**2 + s**2) * (x - self.mean)

    def ode_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """Where the exact ODE carries x from sigma_from to sigma_to."""
        scale = ((self.std**2 + sigma_to**2) / (self.std**2 + sigma_from**2)) ** 0.5
        return self.mean + (x - self.mean) * scale


class SeededNoise:
    """A noise_sampler drawing from its own generator; records every call for assertions."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        self.shape = shape
        self.generator = torch.Generator().manual_seed(seed)
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.calls.append((float(sigma), float(sigma_next)))
        return torch.randn(self.shape, generator=self.generator)

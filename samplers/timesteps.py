"""A1111's timestep samplers: DDIM, DDIM CFG++ and PLMS (v1.6+ re-implementation).

These walk discrete training timesteps instead of sigmas. The model they are handed is a
*guided eps predictor*: ``model(x, t, **extra_args) -> eps`` where ``x`` is the latent in the
variance-preserving parametrisation (x = sqrt(a) * x0 + sqrt(1 - a) * noise, no sigma scaling)
and ``t`` holds one (float) timestep per batch row. The schedule's ᾱ comes in as the
``alphas_cumprod`` keyword: the samplers never reach into a network for it.

Numerics follow A1111 step for step (float32 state, ᾱ_prev in float64, the per-row scalars as
(B, 1, ..., 1) tensors), so trajectories match its formulas to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from samplers._common import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    as_args,
    require_noise,
)

TRAINING_TIMESTEPS = 1000
CFGPP_SCALE = 1 / 12.5  # DDIM CFG++ maps the CFG scale range [0, 12.5] onto [0, 1]

DdimRow = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # a_t, a_prev, sigma_t, sqrt(1 - a_t)


class UncondAwareModel(Protocol):
    """What DDIM CFG++ needs besides the guided eps: the uncond eps of the same call."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> torch.Tensor: ...

    def last_uncond(self) -> torch.Tensor: ...


def ddim_timesteps(steps: int, discard_next_to_last_sigma: bool = False) -> torch.Tensor:
    """A1111's timesteps for every timestep sampler: 1, 1+s, 1+2s, ... with s = 1000 // steps.

    The count is not always ``steps`` (7 -> 8, 30 -> 31) and the samplers evaluate all but the
    first, so 20 steps make 19 model calls. Discarding adds one step, as for k-diffusion.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    steps += 1 if discard_next_to_last_sigma else 0
    if steps > TRAINING_TIMESTEPS:
        raise ValueError(f"timestep samplers allow at most {TRAINING_TIMESTEPS} steps, got {steps}")
    stride = TRAINING_TIMESTEPS // steps
    return torch.clip(torch.arange(0, TRAINING_TIMESTEPS, stride) + 1, 0, TRAINING_TIMESTEPS - 1)


def check_timesteps(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
    """The loops index ᾱ with the timesteps; reject anything that would index out of range."""
    if not isinstance(timesteps, torch.Tensor) or timesteps.ndim != 1 or timesteps.numel() < 2:
        got = tuple(timesteps.shape) if isinstance(timesteps, torch.Tensor) else type(timesteps).__name__
        raise ValueError(f"timesteps must be a 1-D tensor with at least 2 values, got {got}")
    if timesteps.is_floating_point():
        raise ValueError(f"timesteps must be integers, got dtype {timesteps.dtype}")
    if not isinstance(alphas_cumprod, torch.Tensor) or alphas_cumprod.ndim != 1:
        raise ValueError("alphas_cumprod must be the model's 1-D tensor of cumulative alpha products")
    if int(timesteps.min()) < 0 or int(timesteps.max()) >= alphas_cumprod.numel():
        raise ValueError(
            f"timesteps must lie in [0, {alphas_cumprod.numel() - 1}], "
            f"got {int(timesteps.min())}..{int(timesteps.max())}"
        )


@dataclass(frozen=True)
class DDIMTable:
    """Per-timestep constants of a DDIM walk (index j = position in ``timesteps``).

    ``alphas_prev[j]`` is ᾱ at the previous timestep (ᾱ[0] for j = 0) in float64, and
    ``sigmas`` the DDIM noise levels for ``eta``, computed in float64 like A1111.
    """

    alphas: torch.Tensor
    alphas_prev: torch.Tensor
    sqrt_one_minus_alphas: torch.Tensor
    sigmas: torch.Tensor

    @classmethod
    def build(cls, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, eta: float = 0.0) -> DDIMTable:
        acp = alphas_cumprod.detach().cpu()
        ts = timesteps.detach().cpu()
        alphas = acp[ts]
        alphas_prev = acp[torch.nn.functional.pad(ts[:-1], pad=(1, 0))].to(torch.float64)
        one_minus = (1 - alphas).to(torch.float64)
        sigmas = eta * torch.sqrt((1 - alphas_prev) / one_minus * (1 - alphas.to(torch.float64) / alphas_prev))
        return cls(alphas, alphas_prev, torch.sqrt(1 - alphas), sigmas)

    def row(self, index: int, x: torch.Tensor) -> DdimRow:
        """(a_t, a_prev, sigma_t, sqrt(1 - a_t)) at ``index`` as float32 (B, 1, ...) tensors."""
        ones = x.new_ones((x.shape[0],) + (1,) * (x.ndim - 1))
        a_t, a_prev, sigma_t, sqrt_one_minus_at = (
            float(v[index]) * ones for v in (self.alphas, self.alphas_prev, self.sigmas, self.sqrt_one_minus_alphas)
        )
        return a_t, a_prev, sigma_t, sqrt_one_minus_at


def _report(callback: StepCallback | None, x: torch.Tensor, i: int, pred_x0: torch.Tensor) -> None:
    """Timestep samplers report no sigma (A1111 sends 0); ``denoised`` is the x0 estimate."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})


def _ddim_update(
    x: torch.Tensor, e_t: torch.Tensor, e_dir: torch.Tensor,
    row: DdimRow, noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM move: x0 from the guided eps, direction from ``e_dir``, plus ``noise`` scaled by
    sigma_t when given (PLMS adds none; its sigma_t is 0, so the direction term is the same)."""
    a_t, a_prev, sigma_t, sqrt_one_minus_at = row
    pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
    dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_dir
    x_prev = a_prev.sqrt() * pred_x0 + dir_xt
    return (x_prev if noise is None else x_prev + sigma_t * noise), pred_x0


def _timestep_in(timesteps: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
    """The timestep as a float32 value per batch row, as A1111 feeds the CFG denoiser."""
    return float(timesteps[index]) * x.new_ones((x.shape[0],))


@torch.no_grad()
def sample_ddim(
    model: Denoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    alphas_cumprod: torch.Tensor,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM from the last timestep down to timesteps[1] (timesteps[0] is never evaluated).

    Draws one noise tensor per step even at eta = 0 (it is then multiplied by 0), as A1111
    does: the draws advance the per-image RNG streams.
    """
    check_timesteps(timesteps, alphas_cumprod)
    args, noise = as_args(extra_args), require_noise(noise_sampler, "DDIM")
    table = DDIMTable.build(alphas_cumprod, timesteps, eta)
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, _timestep_in(timesteps, index, x), **args)
        drawn = noise(timesteps[index], timesteps[index - 1])
        x, pred_x0 = _ddim_update(x, e_t, e_t, table.row(index, x), drawn)
        _report(callback, x, i, pred_x0)
    return x


@torch.no_grad()
def sample_ddim_cfgpp(
    model: UncondAwareModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    alphas_cumprod: torch.Tensor,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM CFG++ (Chung et al. 2024): guidance scale times 1/12.5, and the step direction
    uses the *unconditional* eps of the same call (``model.last_uncond()``)."""
    check_timesteps(timesteps, alphas_cumprod)
    args, noise = dict(as_args(extra_args)), require_noise(noise_sampler, "DDIM CFG++")
    if "cond_scale" not in args:
        raise ValueError(f"DDIM CFG++ rescales extra_args['cond_scale'], but extra_args has only {sorted(args)}")
    args["cond_scale"] = args["cond_scale"] * CFGPP_SCALE
    table = DDIMTable.build(alphas_cumprod, timesteps, eta)
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, _timestep_in(timesteps, index, x), **args)
        drawn = noise(timesteps[index], timesteps[index - 1])
        x, pred_x0 = _ddim_update(x, e_t, model.last_uncond(), table.row(index, x), drawn)
        _report(callback, x, i, pred_x0)
    return x


# Adams-Bashforth weights on (e_t, e_{t-1}, e_{t-2}, e_{t-3}), by how much history exists.
_PLMS_WEIGHTS = {1: ((3, -1), 2), 2: ((23, -16, 5), 12), 3: ((55, -59, 37, -9), 24)}


def _plms_eps(e_t: torch.Tensor, old_eps: list[torch.Tensor]) -> torch.Tensor:
    """Pseudo linear multistep combination of the current and up to three previous eps.

    Written out term by term in A1111's order so float32 rounding matches."""
    weights, divisor = _PLMS_WEIGHTS[len(old_eps)]
    total = weights[0] * e_t
    for k, weight in enumerate(weights[1:], start=1):
        total = total - (-weight) * old_eps[-k] if weight < 0 else total + weight * old_eps[-k]
    return total / divisor


@torch.no_grad()
def sample_plms(
    model: Denoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """PLMS (Liu et al. 2022): a pseudo improved-Euler first step (two model calls), then
    Adams-Bashforth on eps of order 2, 3 and 4. Deterministic: noise_sampler is never called."""
    check_timesteps(timesteps, alphas_cumprod)
    args = as_args(extra_args)
    table = DDIMTable.build(alphas_cumprod, timesteps, 0.0)
    old_eps: list[torch.Tensor] = []
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        row = table.row(index, x)
        e_t = model(x, _timestep_in(timesteps, index, x), **args)
        if old_eps:
            e_prime = _plms_eps(e_t, old_eps)
        else:
            x_prev, _ = _ddim_update(x, e_t, e_t, row)
            e_next = model(x_prev, _timestep_in(timesteps, max(index - 1, 0), x), **args)
            e_prime = (e_t + e_next) / 2
        x, pred_x0 = _ddim_update(x, e_prime, e_prime, row)
        old_eps = (old_eps + [e_t])[-3:]
        _report(callback, x, i, pred_x0)
    return x

"""A1111's Restart sampler (Xu et al. 2023, "Restart Sampling for Improving Generative Processes").

Heun steps down the schedule; at the restart point (sigma nearest 0.1) the sample is pushed back
up to sigma nearest 2.0 with fresh noise and the segment is re-solved, once or twice. With 20 or
more steps the main schedule is rebuilt as Karras so that the total step count stays as asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from samplers._common import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    as_args,
    check_sigmas,
    denoise,
    require_noise,
    sigma_levels,
    to_d,
)
from samplers.schedules import karras

RESTART_MIN_SIGMA = 0.1  # where the restart segment ends (nearest schedule entry)
RESTART_MAX_SIGMA = 2.0  # where the sample is pushed back up to (nearest schedule entry)
# The same two levels on a rectified-flow model, whose sigma s has noise-to-signal s / (1 - s):
RF_RESTART_MIN_SIGMA = RESTART_MIN_SIGMA / (1 + RESTART_MIN_SIGMA)  # 1/11
RF_RESTART_MAX_SIGMA = RESTART_MAX_SIGMA / (1 + RESTART_MAX_SIGMA)  # 2/3


@dataclass(frozen=True)
class RestartPlan:
    """A restart segment: ``steps`` Karras sigmas between the two levels, walked ``times`` times."""

    steps: int
    times: int
    max_sigma: float


def automatic_plan(
    sigmas: torch.Tensor, min_sigma: float = RESTART_MIN_SIGMA, max_sigma: float = RESTART_MAX_SIGMA
) -> tuple[torch.Tensor, dict[float, RestartPlan]]:
    """A1111's default: no restarts below 20 steps; otherwise rebuild the main schedule to make room."""
    steps = sigmas.shape[0] - 1
    if steps < 20:
        return sigmas, {}
    restart_steps, restart_times = (9, 1) if steps < 36 else (steps // 4, 2)
    main = karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
    return main, {min_sigma: RestartPlan(restart_steps + 1, restart_times, max_sigma)}


def _nearest_index(sigmas: torch.Tensor, value: float) -> int:
    return int(torch.argmin(abs(sigmas - value), dim=0))


def build_step_list(
    sigmas: torch.Tensor, plans: Mapping[float, RestartPlan], host_sigmas: torch.Tensor | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All (sigma_from, sigma_to) pairs in walking order, restart segments spliced in after their index.

    ``host_sigmas`` is a CPU copy of ``sigmas`` that the index search and the restart levels read,
    so that a schedule on the GPU is never read back (defaults to ``sigmas`` itself)."""
    host = sigmas if host_sigmas is None else host_sigmas
    by_index = {_nearest_index(host, key): plan for key, plan in plans.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        plan = by_index.get(i + 1)
        if plan is not None:
            pairs.extend(_restart_pairs(host, i + 1, plan))
    return pairs


def _restart_pairs(sigmas: torch.Tensor, min_idx: int, plan: RestartPlan) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The restart segment's pairs (CPU tensors), repeated; empty when the restart level is not above
    the current one."""
    max_idx = _nearest_index(sigmas, plan.max_sigma)
    if max_idx >= min_idx:
        return []
    segment = karras(plan.steps, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
    return list(zip(segment[:-1], segment[1:], strict=True)) * plan.times


@torch.no_grad()
def sample_restart(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_noise: float = 1.0,
    restart_list: Mapping[float, RestartPlan] | None = None,
) -> torch.Tensor:
    """Restart sampling as in A1111. ``noise_sampler(sigma_low, sigma_high)`` supplies the restart noise.

    The callback's ``i`` counts Heun steps (restart segments included), its ``sigma`` is the step's
    target and ``sigma_hat`` its start, as upstream reports them.
    """
    check_sigmas(sigmas)
    noise = require_noise(noise_sampler, "Restart")
    levels = (RESTART_MIN_SIGMA, RESTART_MAX_SIGMA)
    return _restart_loop(model, x, sigmas, restart_list, as_args(extra_args), callback, noise, s_noise, levels,
                         _ve_renoise)


@torch.no_grad()
def sample_restart_rf(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_noise: float = 1.0,
    restart_list: Mapping[float, RestartPlan] | None = None,
) -> torch.Tensor:
    """"Restart" on a rectified-flow model (x_s = (1 - s) x0 + s noise): the same Heun steps (they
    only see the x0 estimate), A1111's restart levels 0.1 and 2.0 taken as noise-to-signal
    s / (1 - s) (flow sigmas 1/11 and 2/3), and the push back up done the flow way: scale x by
    (1 - s_hi) / (1 - s_lo) and add noise of std sqrt(s_hi^2 - scale^2 s_lo^2), which puts a
    sample of the marginal at s_lo onto the marginal at s_hi."""
    check_sigmas(sigmas)
    noise = require_noise(noise_sampler, "Restart")
    levels = (RF_RESTART_MIN_SIGMA, RF_RESTART_MAX_SIGMA)
    return _restart_loop(model, x, sigmas, restart_list, as_args(extra_args), callback, noise, s_noise, levels,
                         rf_renoise)


Renoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, lo, hi, noise)


def _ve_renoise(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return x + noise * (high**2 - low**2) ** 0.5


def rf_renoise(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """From the flow marginal at sigma `low` to the one at `high` (> low), with unit `noise`."""
    scale = (1 - high) / (1 - low)
    return scale * x + noise * (high**2 - scale**2 * low**2).clamp(min=0) ** 0.5


def _restart_loop(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, restart_list: Mapping[float, RestartPlan] | None,
    args: Mapping[str, Any], callback: StepCallback | None, noise: NoiseSampler, s_noise: float,
    levels: tuple[float, float], renoise: Renoise,
) -> torch.Tensor:
    """Heun down the step list; where a pair starts above the last one's end, renoise up first. The
    step list and the restart test read a host copy of the schedule (one device read, before the loop)."""
    host_sigmas = torch.tensor(sigma_levels(sigmas), dtype=sigmas.dtype)
    if restart_list is None:
        main, plans = automatic_plan(host_sigmas, *levels)
        if main is not host_sigmas:  # rebuilt as Karras (on the CPU, as upstream's)
            sigmas = host_sigmas = main
    else:
        plans = dict(restart_list)
    pairs, host_pairs = build_step_list(sigmas, plans, host_sigmas), build_step_list(host_sigmas, plans)
    last: tuple[torch.Tensor, torch.Tensor] | None = None  # the previous target: (sigma, its host copy)
    for step_id, ((old_sigma, new_sigma), (old_level, new_level)) in enumerate(zip(pairs, host_pairs, strict=True)):
        if last is not None and last[1] < old_level:  # a restart: back up with fresh noise
            x = renoise(x, last[0], old_sigma, noise(last[1], old_level) * s_noise)
        x = _heun_step(model, x, old_sigma, new_sigma, args, callback, step_id, bool(new_level == 0))
        last = (new_sigma, new_level)
    return x


def _heun_step(
    model: Denoiser, x: torch.Tensor, old_sigma: torch.Tensor, new_sigma: torch.Tensor, args: Mapping[str, Any],
    callback: StepCallback | None, step_id: int, into_zero: bool,
) -> torch.Tensor:
    """One Heun step (Euler into sigma = 0, which ``into_zero`` says from the host copy)."""
    denoised = denoise(model, x, old_sigma, args)
    d = to_d(x, old_sigma, denoised)
    if callback is not None:
        callback({"x": x, "i": step_id, "sigma": new_sigma, "sigma_hat": old_sigma, "denoised": denoised})
    dt = new_sigma - old_sigma
    if into_zero:
        return x + d * dt
    x_2 = x + d * dt
    d_2 = to_d(x_2, new_sigma, denoise(model, x_2, new_sigma, args))
    return x + (d + d_2) / 2 * dt

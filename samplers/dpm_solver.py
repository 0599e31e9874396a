"""DPM-Solver fast (fixed steps) and adaptive (Lu et al. 2022), as k-diffusion implements them.

They ignore the schedule: they integrate in t = -log(sigma) between ``sigma_max`` and
``sigma_min`` (A1111 passes the model table's range for txt2img). With eta > 0 (A1111's
default is 1.0) they are stochastic; the noise comes from ``noise_sampler``, which DPM fast
calls on every step even at eta = 0, like upstream (its draws advance the RNG streams).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from samplers._common import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    ancestral_step,
    as_args,
    require_noise,
    sigma_of,
    t_of,
)


class VESchedule:
    """k-diffusion's variance-exploding form x = x0 + sigma * eps: time t = -log(sigma), alpha = 1.

    Every method returns its input untouched where alpha = 1, so the k-diffusion numerics stay
    exactly as upstream."""

    def model_sigma(self, t: Tensor) -> Tensor:
        """The sigma the denoiser is called with at time t."""
        return sigma_of(t)

    def time(self, sigma: Tensor) -> Tensor:
        return t_of(sigma)

    def noise_to_signal(self, t: Tensor) -> Tensor:
        """sigma / alpha = e^-t: the variance-exploding sigma the ancestral split works on."""
        return sigma_of(t)

    def scaled_x0(self, denoised: Tensor, t: Tensor) -> Tensor:
        """alpha(t) * x0."""
        return denoised

    def x0(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The data estimate (x - sigma eps) / alpha."""
        return x - sigma_of(t) * eps

    def rescale(self, x: Tensor, t: Tensor, t_to: Tensor) -> Tensor:
        """x * alpha(t_to) / alpha(t): the first term of every exponential-integrator step."""
        return x

    def renoise(self, x: Tensor, t_down: Tensor, t_to: Tensor, noise: Tensor) -> Tensor:
        """From the ancestral step's down point to t_to, adding `noise` (variance-exploding units)."""
        return x + noise


class FlowSchedule(VESchedule):
    """A rectified-flow model's x = (1 - s) x0 + s eps: time t = lambda = log((1 - s) / s), so
    s = sigmoid(-t), alpha = sigmoid(t) and sigma / alpha = e^-t (the same t as the VE form's,
    measured on sigma / alpha). lambda is infinite at s = 0 and 1: the interval stays inside."""

    def model_sigma(self, t: Tensor) -> Tensor:
        return t.neg().sigmoid()

    def time(self, sigma: Tensor) -> Tensor:
        return sigma.logit().neg()

    def noise_to_signal(self, t: Tensor) -> Tensor:
        return t.neg().exp()

    def scaled_x0(self, denoised: Tensor, t: Tensor) -> Tensor:
        return t.sigmoid() * denoised

    def x0(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return (x - self.model_sigma(t) * eps) / t.sigmoid()

    def rescale(self, x: Tensor, t: Tensor, t_to: Tensor) -> Tensor:
        return (t_to.sigmoid() / t.sigmoid()) * x

    def renoise(self, x: Tensor, t_down: Tensor, t_to: Tensor, noise: Tensor) -> Tensor:
        return self.rescale(x, t_down, t_to) + t_to.sigmoid() * noise


VE = VESchedule()
FLOW = FlowSchedule()


@dataclass
class _Solver:
    """The model in eps form, with the callback; ``cache`` holds one step's evaluations by name.
    The steps are DPM-Solver's for a general (alpha, sigma) schedule (Lu et al. 2022, eqs. for
    DPM-Solver-1/2/3); `schedule` says which (VE: k-diffusion's, FLOW: a flow model's)."""

    model: Any
    args: Mapping[str, Any]
    schedule: VESchedule = VE
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    def eps(self, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise prediction at time t, computed once per key within a step."""
        if key not in self.cache:
            ns = self.schedule
            sigma = ns.model_sigma(t) * x.new_ones([x.shape[0]])
            self.cache[key] = (x - ns.scaled_x0(self.model(x, sigma, **self.args), t)) / ns.model_sigma(t)
        return self.cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        """DPM-Solver-1 (DDIM-like) step."""
        ns, h = self.schedule, t_next - t
        return ns.rescale(x, t, t_next) - ns.model_sigma(t_next) * h.expm1() * self.eps("eps", x, t)

    def step_2(self, x: Tensor, t: Tensor, t_next: Tensor, r1: float = 1 / 2) -> Tensor:
        """DPM-Solver-2 step with the intermediate point at t + r1*h."""
        ns, h = self.schedule, t_next - t
        eps = self.eps("eps", x, t)
        s1 = t + r1 * h
        u1 = ns.rescale(x, t, s1) - ns.model_sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps("eps_r1", u1, s1)
        sigma_next = ns.model_sigma(t_next)
        return ns.rescale(x, t, t_next) - sigma_next * h.expm1() * eps - sigma_next / (2 * r1) * h.expm1() * (
            eps_r1 - eps)

    def step_3(self, x: Tensor, t: Tensor, t_next: Tensor, r1: float = 1 / 3, r2: float = 2 / 3) -> Tensor:
        """DPM-Solver-3 step with intermediate points at t + r1*h and t + r2*h."""
        ns, h = self.schedule, t_next - t
        eps = self.eps("eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = ns.rescale(x, t, s1) - ns.model_sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps("eps_r1", u1, s1)
        u2 = (ns.rescale(x, t, s2) - ns.model_sigma(s2) * (r2 * h).expm1() * eps
              - ns.model_sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps("eps_r2", u2, s2)
        sigma_next = ns.model_sigma(t_next)
        return (ns.rescale(x, t, t_next) - sigma_next * h.expm1() * eps
                - sigma_next / r2 * (h.expm1() / h - 1) * (eps_r2 - eps))

    def step(self, order: int, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        """A step of the given order (1, 2 or 3) with default intermediate points."""
        return {1: self.step_1, 2: self.step_2, 3: self.step_3}[order](x, t, t_next)


def _check_interval(sigma_min: float, sigma_max: float) -> None:
    """log(0) is -inf: these solvers cannot start or stop at sigma 0."""
    if not (sigma_min > 0 and sigma_max > 0):
        raise ValueError(f"sigma_min and sigma_max must be > 0, got {sigma_min!r} and {sigma_max!r}")


def _ancestral_target(
    t: Tensor, t_next: Tensor, t_end: Tensor, eta: float, schedule: VESchedule = VE
) -> tuple[Tensor, Tensor | float]:
    """Where the deterministic part of a stochastic step stops, and the noise to add back (in
    sigma / alpha units: the ancestral split is done on the variance-exploding form)."""
    if not eta:
        return t_next, 0.0
    level = schedule.noise_to_signal
    sd, _ = ancestral_step(level(t), level(t_next), eta)
    t_next_ = torch.minimum(t_end, t_of(sd))
    return t_next_, (level(t_next) ** 2 - level(t_next_) ** 2) ** 0.5


def fast_orders(nfe: int) -> list[int]:
    """Solver orders per step so that the total number of model calls is exactly nfe."""
    m = math.floor(nfe / 3) + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


@torch.no_grad()
def sample_dpm_fast(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | None = None,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    n: int,
    sigma_min: float,
    sigma_max: float,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver-Fast: n model calls spread over floor(n/3)+1 steps of order 3 (then 2/1)."""
    solver = _Solver(model, as_args(extra_args))
    return _fast_loop(solver, x, n, sigma_min, sigma_max, eta, s_noise, require_noise(noise_sampler, "DPM fast"),
                      callback)


@torch.no_grad()
def sample_dpm_fast_rf(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | None = None,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    n: int,
    sigma_min: float,
    sigma_max: float,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """"DPM fast" on a rectified-flow model: the same steps in lambda = log((1 - s) / s) with
    alpha = 1 - s; sigma_min and sigma_max must lie strictly between 0 and 1."""
    _check_flow_interval(sigma_min, sigma_max)
    solver = _Solver(model, as_args(extra_args), FLOW)
    return _fast_loop(solver, x, n, sigma_min, sigma_max, eta, s_noise, require_noise(noise_sampler, "DPM fast"),
                      callback)


def _check_flow_interval(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < 1 and 0 < sigma_max < 1):
        raise ValueError(f"on a flow model sigma_min and sigma_max need (0, 1), got {sigma_min!r} and {sigma_max!r}")


def _fast_loop(
    solver: _Solver, x: Tensor, n: int, sigma_min: float, sigma_max: float, eta: float, s_noise: float,
    noise: NoiseSampler, callback: StepCallback | None,
) -> Tensor:
    """The fixed-order steps of DPM fast; noise is drawn on every step, even at eta = 0."""
    _check_interval(sigma_min, sigma_max)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (model evaluations) must be a positive int, got {n!r}")
    ns = solver.schedule
    t_start, t_end = ns.time(torch.tensor(sigma_max)), ns.time(torch.tensor(sigma_min))
    if not t_end > t_start and eta:
        raise ValueError(f"eta must be 0 for reverse sampling (sigma_min {sigma_min} >= sigma_max {sigma_max})")
    orders = fast_orders(n)
    ts = torch.linspace(t_start, t_end, len(orders) + 1, device=x.device)
    host_ts = torch.linspace(t_start, t_end, len(orders) + 1)  # for the noise sampler: no reads off the device
    t_end_here = t_end.to(ts.device)  # one copy before the loop, not one per step
    for i, order in enumerate(orders):
        solver.cache = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = _ancestral_target(t, t_next, t_end_here, eta, ns)
        denoised = ns.x0(x, solver.eps("eps", x, t), t)
        _report(callback, x, i, ns.model_sigma(t), denoised)
        x = solver.step(order, x, t, t_next_)
        step_noise = noise(ns.model_sigma(host_ts[i]), ns.model_sigma(host_ts[i + 1]))
        x = ns.renoise(x, t_next_, t_next, su * s_noise * step_noise)
    return x


def _report(callback: StepCallback | None, x: Tensor, i: int, sigma: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


@dataclass
class PIDStepSizeController:
    """Adaptive step size from the error history (a PID controller on log error), as in k-diffusion."""

    h: float
    pcoeff: float
    icoeff: float
    dcoeff: float
    order: float = 1.0
    accept_safety: float = 0.81
    eps: float = 1e-8
    errs: list[float] = field(default_factory=list)

    def propose_step(self, error: Tensor) -> bool:
        """Rescale h from the new error; report whether the step that produced it is accepted."""
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / self.order
        b2 = -(self.pcoeff + 2 * self.dcoeff) / self.order
        b3 = self.dcoeff / self.order
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = 1 + math.atan(self.errs[0] ** b1 * self.errs[1] ** b2 * self.errs[2] ** b3 - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@dataclass(frozen=True)
class AdaptiveSettings:
    """k-diffusion's defaults for DPM-Solver-23 (A1111 passes none of these)."""

    order: int = 3
    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.05
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    accept_safety: float = 0.81


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | None = None,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    sigma_min: float,
    sigma_max: float,
    eta: float = 0.0,
    s_noise: float = 1.0,
    settings: AdaptiveSettings = AdaptiveSettings(),
) -> torch.Tensor:
    """DPM-Solver-12/23 with error-controlled step sizes; the step count is not fixed in advance.

    The one sampler whose loop reads the device every step, by design: accepting or rejecting a
    step needs the error norm on the host (``PIDStepSizeController.propose_step``), and the loop's
    end test compares the accepted time with t_end. On CUDA each step therefore waits for the GPU;
    the schedule is not known in advance, so nothing can be planned before the loop.
    """
    _check_interval(sigma_min, sigma_max)
    solver = _Solver(model, as_args(extra_args))
    return _adaptive(solver, x, sigma_min, sigma_max, eta, s_noise, noise_sampler, settings, callback)


@torch.no_grad()
def sample_dpm_adaptive_rf(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | None = None,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    sigma_min: float,
    sigma_max: float,
    eta: float = 0.0,
    s_noise: float = 1.0,
    settings: AdaptiveSettings = AdaptiveSettings(),
) -> torch.Tensor:
    """"DPM adaptive" on a rectified-flow model: the error-controlled steps in lambda with
    alpha = 1 - s (k-diffusion's tolerances and initial step, now in lambda units)."""
    _check_flow_interval(sigma_min, sigma_max)
    solver = _Solver(model, as_args(extra_args), FLOW)
    return _adaptive(solver, x, sigma_min, sigma_max, eta, s_noise, noise_sampler, settings, callback)


def _adaptive(
    solver: _Solver, x: Tensor, sigma_min: float, sigma_max: float, eta: float, s_noise: float,
    noise_sampler: NoiseSampler | None, settings: AdaptiveSettings, callback: StepCallback | None,
) -> Tensor:
    if settings.order not in (2, 3):
        raise ValueError(f"DPM adaptive order must be 2 or 3, got {settings.order!r}")
    noise = require_noise(noise_sampler, "DPM adaptive")
    t_start, t_end = solver.schedule.time(torch.tensor(sigma_max)), solver.schedule.time(torch.tensor(sigma_min))
    if not t_end > t_start and eta:
        raise ValueError(f"eta must be 0 for reverse sampling (sigma_min {sigma_min} >= sigma_max {sigma_max})")
    return _adaptive_loop(solver, x, t_start, t_end, eta, s_noise, noise, settings, callback)


def _adaptive_loop(
    solver: _Solver, x: Tensor, t_start: Tensor, t_end: Tensor, eta: float, s_noise: float, noise: NoiseSampler,
    cfg: AdaptiveSettings, callback: StepCallback | None,
) -> Tensor:
    """Propose a step, estimate its error from two orders, accept or shrink, until t_end."""
    ns = solver.schedule
    forward = t_end > t_start
    h_init = abs(cfg.h_init) * (1 if forward else -1)
    atol, rtol = torch.tensor(cfg.atol), torch.tensor(cfg.rtol)
    pid = PIDStepSizeController(
        h_init, cfg.pcoeff, cfg.icoeff, cfg.dcoeff, 1.5 if eta else cfg.order, cfg.accept_safety
    )
    s, x_prev, steps = t_start, x, 0
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        solver.cache = {}
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        t_, su = _ancestral_target(s, t, t_end, eta, ns)
        denoised = ns.x0(x, solver.eps("eps", x, s), s)
        x_low, x_high = _low_high(solver, cfg.order, x, s, t_)
        delta = torch.maximum(atol.to(x.device), rtol.to(x.device) * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = ns.renoise(x_high, t_, t, su * s_noise * noise(ns.model_sigma(s), ns.model_sigma(t)))
            s = t
        _report(callback, x, steps, ns.model_sigma(s), denoised)
        steps += 1
    return x


def _low_high(solver: _Solver, order: int, x: Tensor, s: Tensor, t_: Tensor) -> tuple[Tensor, Tensor]:
    """The embedded pair whose difference estimates the local error (they share evaluations)."""
    if order == 2:
        return solver.step_1(x, s, t_), solver.step_2(x, s, t_)
    return solver.step_2(x, s, t_, r1=1 / 3), solver.step_3(x, s, t_)

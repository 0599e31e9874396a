"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), as A1111 runs it.

A1111 ships a port of the official implementation and drives it with: a discrete VP noise
schedule built from ᾱ, data prediction (x0), no thresholding, multistep method, the variant /
skip type / order / lower_order_final from its ``uni_pc_*`` options, and ``steps`` equal to the
number of DDIM timesteps (so 30 requested steps run 31 UniPC steps). Its model is the guided
eps predictor of the timestep samplers, called with the model time (t - 1/N) * 1000.

Continuous time t runs from 1 (pure noise) to 1/N; ᾱ is interpolated piecewise linearly in
log-alpha over the N training steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from samplers._common import Denoiser, NoiseSampler, StepCallback, as_args

VARIANTS = ("bh1", "bh2", "vary_coeff")
SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")


@dataclass(frozen=True)
class UniPCOptions:
    """A1111's options uni_pc_variant, uni_pc_skip_type, uni_pc_order, uni_pc_lower_order_final."""

    variant: str = "bh1"
    skip_type: str = "time_uniform"
    order: int = 3
    lower_order_final: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"UniPC variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.skip_type not in SKIP_TYPES:
            raise ValueError(f"UniPC skip type must be one of {SKIP_TYPES}, got {self.skip_type!r}")
        if not isinstance(self.order, int) or isinstance(self.order, bool) or not 1 <= self.order <= 3:
            raise ValueError(f"UniPC order must be 1, 2 or 3, got {self.order!r}")


def interpolate(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) through keypoints (xp, yp), extended linearly beyond both ends.

    x: (N, 1); xp, yp: (1, K). The segment is found by sorting x in among the keypoints (the
    upstream method, kept so ties at a keypoint pick the same segment).
    """
    n, k = x.shape[0], xp.shape[1]
    merged = torch.cat([x.unsqueeze(2), xp.unsqueeze(0).repeat((n, 1, 1))], dim=2)
    ordered, order = torch.sort(merged, dim=2)
    pos = torch.argmin(order, dim=2)  # where x landed among the keypoints
    before = pos - 1
    first, last = torch.eq(pos, 0), torch.eq(pos, k)
    below_last = torch.tensor(k - 2, device=x.device)
    lo = torch.where(first, torch.tensor(1, device=x.device), torch.where(last, below_last, before))
    hi = torch.where(torch.eq(lo, before), lo + 2, lo + 1)
    x_lo = torch.gather(ordered, dim=2, index=lo.unsqueeze(2)).squeeze(2)
    x_hi = torch.gather(ordered, dim=2, index=hi.unsqueeze(2)).squeeze(2)
    y_idx = torch.where(first, torch.tensor(0, device=x.device), torch.where(last, below_last, before))
    ys = yp.unsqueeze(0).expand(n, -1, -1)
    y_lo = torch.gather(ys, dim=2, index=y_idx.unsqueeze(2)).squeeze(2)
    y_hi = torch.gather(ys, dim=2, index=(y_idx + 1).unsqueeze(2)).squeeze(2)
    return y_lo + (x - x_lo) * (y_hi - y_lo) / (x_hi - x_lo)


class DiscreteVPSchedule:
    """The VP schedule of a discrete-time model: log alpha_t = 0.5 * log ᾱ at t_n = (n + 1) / N."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        log_alphas = 0.5 * torch.log(alphas_cumprod)
        self.total_n = len(log_alphas)
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1)[1:].reshape((1, -1))
        self.log_alpha_array = log_alphas.reshape((1, -1))

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        table = (self.t_array.to(t.device), self.log_alpha_array.to(t.device))
        return interpolate(t.reshape((-1, 1)), *table).reshape((-1,))

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR: log alpha_t - log sigma_t."""
        log_mean = self.log_alpha(t)
        return log_mean - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean))

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,)).to(lamb.device), -2.0 * lamb)
        flipped = (torch.flip(self.log_alpha_array.to(lamb.device), [1]), torch.flip(self.t_array.to(lamb.device), [1]))
        return interpolate(log_alpha.reshape((-1, 1)), *flipped).reshape((-1,))


def time_steps(
    schedule: DiscreteVPSchedule, skip_type: str, t_T: float, t_0: float, n: int, device: torch.device | str
) -> torch.Tensor:
    """The n + 1 continuous times from t_T down to t_0."""
    if skip_type == "logSNR":
        lambda_T = schedule.lambda_(torch.tensor(t_T).to(device))
        lambda_0 = schedule.lambda_(torch.tensor(t_0).to(device))
        return schedule.inverse_lambda(torch.linspace(lambda_T.cpu().item(), lambda_0.cpu().item(), n + 1).to(device))
    if skip_type == "time_uniform":
        return torch.linspace(t_T, t_0, n + 1).to(device)
    return torch.linspace(t_T**0.5, t_0**0.5, n + 1).pow(2).to(device)


def _expand(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v[(...,) + (None,) * (ndim - 1)]


def _weighted_sum(weights: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * stacked[:, k] via einsum (same contraction as upstream for 4-D latents)."""
    dims = "cdefgh"[: stacked.ndim - 2]
    return torch.einsum(f"k,bk{dims}->b{dims}", weights, stacked)


class NoiseSchedule(Protocol):
    """What the UniPC update reads of a noise schedule at (per-row) times t."""

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor: ...

    def std(self, t: torch.Tensor) -> torch.Tensor: ...

    def lambda_(self, t: torch.Tensor) -> torch.Tensor: ...


class FlowSchedule:
    """A rectified-flow model's schedule with time t = sigma: alpha = 1 - s, sigma = s and
    lambda = log((1 - s) / s) (infinite at s = 0 and 1, so the walk avoids both ends)."""

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log1p(-t)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        return t.logit().neg()


@dataclass
class _Solver:
    """One UniPC run: the x0 predictor at time t, the schedule and the variant."""

    predict_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    schedule: NoiseSchedule
    variant: str

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.predict_x0(x, t)

    def history(
        self, model_prev: list[torch.Tensor], t_prev: list[torch.Tensor], h: torch.Tensor, lambda_prev_0: torch.Tensor,
        order: int,
    ) -> tuple[list[torch.Tensor | float], list[torch.Tensor]]:
        """Ratios r_k of older log-SNR gaps to h, and the scaled differences D1_k."""
        rks: list[torch.Tensor | float] = []
        d1s: list[torch.Tensor] = []
        for i in range(1, order):
            rk = ((self.schedule.lambda_(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - model_prev[-1]) / rk)
        return rks, d1s

    def update(
        self, x: torch.Tensor, model_prev: list[torch.Tensor], t_prev: list[torch.Tensor], t: torch.Tensor, order: int,
        use_corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One multistep update; returns x_t and, with the corrector, the model's x0 at t."""
        ns = self.schedule
        lambda_prev_0 = ns.lambda_(t_prev[-1])
        h = ns.lambda_(t) - lambda_prev_0
        ratios, d1s = self.history(model_prev, t_prev, h, lambda_prev_0, order)
        rks = torch.tensor(ratios + [1.0], device=x.device)
        step = _Step(x, model_prev[-1], ns.std(t) / ns.std(t_prev[-1]), torch.exp(ns.log_alpha(t)), rks, d1s)
        if self.variant == "vary_coeff":
            return step.vary_coeff(self, t, -h[0], use_corrector)
        return step.bh(self, t, -h[0], order, use_corrector, self.variant)


@dataclass
class _Step:
    """The quantities one multistep update shares between predictor and corrector."""

    x: torch.Tensor
    model_prev_0: torch.Tensor
    sigma_ratio: torch.Tensor
    alpha_t: torch.Tensor
    rks: torch.Tensor
    d1s: list[torch.Tensor]

    def base(self, h_phi_1: torch.Tensor) -> torch.Tensor:
        nd = self.x.ndim
        return _expand(self.sigma_ratio, nd) * self.x - _expand(self.alpha_t * h_phi_1, nd) * self.model_prev_0

    def bh(
        self, solver: _Solver, t: torch.Tensor, hh: torch.Tensor, order: int, use_corrector: bool, variant: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """UniPC-B(h): B(h) = h (bh1) or e^h - 1 (bh2); coefficients from a small linear solve."""
        h_phi_1 = torch.expm1(hh)
        b_h = hh if variant == "bh1" else torch.expm1(hh)
        rows: list[torch.Tensor] = []
        coefficients: list[torch.Tensor] = []
        h_phi_k, factorial = h_phi_1 / hh - 1, 1
        for i in range(1, order + 1):
            rows.append(torch.pow(self.rks, i - 1))
            coefficients.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_mat, b = torch.stack(rows), torch.tensor(coefficients, device=self.x.device)
        d1s = torch.stack(self.d1s, dim=1) if self.d1s else None
        x_base, scale = self.base(h_phi_1), _expand(self.alpha_t * b_h, self.x.ndim)
        pred_res: torch.Tensor | int = 0
        if d1s is not None:
            rhos_p = torch.tensor([0.5], device=b.device) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
            pred_res = _weighted_sum(rhos_p, d1s)
        x_t = x_base - scale * pred_res
        if not use_corrector:
            return x_t, None
        rhos_c = torch.tensor([0.5], device=b.device) if order == 1 else torch.linalg.solve(r_mat, b)
        model_t = solver.data_prediction(x_t, t)
        corr_res = _weighted_sum(rhos_c[:-1], d1s) if d1s is not None else 0
        return x_base - scale * (corr_res + rhos_c[-1] * (model_t - self.model_prev_0)), model_t

    def vary_coeff(
        self, solver: _Solver, t: torch.Tensor, hh: torch.Tensor, use_corrector: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """UniPC with varying coefficients (inverse of a Vandermonde-like matrix)."""
        k_count, nd = len(self.rks), self.x.ndim
        columns, col = [], torch.ones_like(self.rks)
        for k in range(1, k_count + 1):
            columns.append(col)
            col = col * self.rks / (k + 1)
        c_mat = torch.stack(columns, dim=1)
        h_phi_ks: list[torch.Tensor] = []
        h_phi_k, factorial = torch.expm1(hh), 1
        for k in range(1, k_count + 2):
            h_phi_ks.append(h_phi_k)
            h_phi_k = h_phi_k / hh - 1 / factorial
            factorial *= k + 1
        x_base = self.base(h_phi_ks[0])
        d1s = torch.stack(self.d1s, dim=1) if self.d1s else None
        x_t = x_base
        if d1s is not None:
            a_p = torch.linalg.inv(c_mat[:-1, :-1])
            for k in range(k_count - 1):
                x_t = x_t - _expand(self.alpha_t * h_phi_ks[k + 1], nd) * _weighted_sum(a_p[k], d1s)
        if not use_corrector:
            return x_t, None
        a_c = torch.linalg.inv(c_mat)
        model_t = solver.data_prediction(x_t, t)
        x_t, k = x_base, 0
        if d1s is not None:  # without history k_count is 1 and there is nothing to add
            for k in range(k_count - 1):
                x_t = x_t - _expand(self.alpha_t * h_phi_ks[k + 1], nd) * _weighted_sum(a_c[k][:-1], d1s)
        last = _expand(self.alpha_t * h_phi_ks[k_count], nd) * ((model_t - self.model_prev_0) * a_c[k][-1])
        return x_t - last, model_t


def _report(callback: StepCallback | None, x: torch.Tensor, i: int, denoised: torch.Tensor | None) -> None:
    """A1111 reports after every update; the last one has no fresh x0, so x itself is reported."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x if denoised is None else denoised})


@torch.no_grad()
def sample_unipc(
    model: Denoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    alphas_cumprod: torch.Tensor,
    options: UniPCOptions = UniPCOptions(),
    t_start: float | None = None,
) -> torch.Tensor:
    """Multistep UniPC over len(timesteps) steps from t_start (default 1) to 1/N.

    Model calls: one per step (the corrector's evaluation doubles as the next step's history;
    the last step skips the corrector). Deterministic: noise_sampler is never called.
    ``t_start`` is A1111's img2img start, timesteps[-1] / 1000 + 1 / 1000.
    """
    steps = len(timesteps)
    _check_order(options, steps)
    schedule = DiscreteVPSchedule(alphas_cumprod)
    times = time_steps(schedule, options.skip_type, 1.0 if t_start is None else t_start, 1.0 / schedule.total_n,
                       steps, x.device)
    solver = _Solver(_vp_x0(model, as_args(extra_args), schedule), schedule, options.variant)
    return _multistep(solver, x, times, options, callback, ends_at_zero=False)


def _check_order(options: UniPCOptions, steps: int) -> None:
    if steps < options.order:
        raise ValueError(f"UniPC order must be < sampling steps: order {options.order}, {steps} steps")


def _vp_x0(
    model: Denoiser, args: Mapping[str, Any], schedule: DiscreteVPSchedule
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """x0 from the eps model at continuous time t (model time (t - 1/N) * 1000)."""

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model(x, (t - 1.0 / schedule.total_n) * 1000.0, **args)
        alpha_t, sigma_t = schedule.alpha(t), schedule.std(t)
        return (x - _expand(sigma_t, x.ndim) * eps) / _expand(alpha_t, x.ndim)

    return predict


@torch.no_grad()
def sample_unipc_rf(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    options: UniPCOptions = UniPCOptions(),
) -> torch.Tensor:
    """"UniPC" on a rectified-flow model (Flux, SD3): the same multistep data-prediction
    predictor-corrector, walked over the flow schedule itself (the skip type does not apply)
    with alpha = 1 - s, sigma = s. ``model(x, sigma)`` is the flow denoiser (x0 estimate).

    The schedule must start below 1 (lambda is -inf at 1: pass it through
    flow.first_sigma_below_one). A last step into sigma 0 is the order-1 step, whose limit is the
    x0 estimate the previous corrector computed, so len(sigmas) - 1 model calls in all.
    Deterministic: noise_sampler is never called.
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2 or float(sigmas.max()) >= 1 or float(sigmas.min()) < 0:
        raise ValueError(f"UniPC on a flow model needs 2+ sigmas in [0, 1), got {sigmas.tolist()}")
    _check_order(options, len(sigmas) - 1)
    args = as_args(extra_args)
    solver = _Solver(lambda x_t, t: model(x_t, t, **args), FlowSchedule(), options.variant)
    return _multistep(solver, x, sigmas.to(x.device), options, callback, ends_at_zero=float(sigmas[-1]) == 0)


def _multistep(
    solver: _Solver, x: torch.Tensor, times: torch.Tensor, options: UniPCOptions, callback: StepCallback | None,
    ends_at_zero: bool,
) -> torch.Tensor:
    """The UniPC loop over len(times) - 1 updates: one model call per update (the corrector's
    evaluation doubles as the next update's history; the last update skips the corrector).
    `ends_at_zero`: the last time is 0 and its update returns the latest x0 estimate."""
    steps = len(times) - 1
    vec_t = times[0].expand(x.shape[0])
    model_prev, t_prev = [solver.data_prediction(x, vec_t)], [vec_t]
    for step in range(1, steps + 1):
        vec_t = times[step].expand(x.shape[0])
        if ends_at_zero and step == steps:
            x = model_prev[-1]
            _report(callback, x, step - 1, None)
            break
        warmup = step < options.order
        order = step if warmup else _step_order(options, steps, step)
        x, model_x = solver.update(x, model_prev, t_prev, vec_t, order, use_corrector=warmup or step != steps)
        _report(callback, x, step - 1, model_x)
        if warmup:  # the corrector ran, so model_x is set
            model_prev.append(solver.data_prediction(x, vec_t) if model_x is None else model_x)
            t_prev.append(vec_t)
            continue
        model_prev, t_prev = model_prev[1:] + [model_prev[-1]], t_prev[1:] + [vec_t]
        if step < steps:
            model_prev[-1] = solver.data_prediction(x, vec_t) if model_x is None else model_x
    return x


def _step_order(options: UniPCOptions, steps: int, step: int) -> int:
    """With lower_order_final the last steps drop to the orders the remaining steps allow."""
    return min(options.order, steps + 1 - step) if options.lower_order_final else options.order

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

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The discrete model's timestep at continuous time t: (t - 1/N) * 1000."""
        return (t - 1.0 / self.total_n) * 1000.0

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
    """What a UniPC step plan reads of a noise schedule at (per-row) times t, and the time the model is called with."""

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor: ...

    def std(self, t: torch.Tensor) -> torch.Tensor: ...

    def lambda_(self, t: torch.Tensor) -> torch.Tensor: ...

    def model_time(self, t: torch.Tensor) -> torch.Tensor: ...


class FlowSchedule:
    """A rectified-flow model's schedule with time t = sigma: alpha = 1 - s, sigma = s and
    lambda = log((1 - s) / s) (infinite at s = 0 and 1, so the walk avoids both ends).
    The model is called with sigma itself."""

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log1p(-t)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        return t.logit().neg()

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t


def _move(value: Any, device: torch.device) -> Any:
    """A plan's tensors (alone, in lists or None) on the sampling device."""
    if isinstance(value, list):
        return [_move(item, device) for item in value]
    # non_blocking: a host-to-device copy from ordinary memory is staged at once, without waiting for the GPU
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


@dataclass
class _TimePoint:
    """The schedule at one time t, as (B,) tensors: the model's timestep, alpha_t, sigma_t."""

    model_time: torch.Tensor
    alpha: torch.Tensor
    std: torch.Tensor

    @classmethod
    def at(cls, schedule: NoiseSchedule, t: torch.Tensor) -> _TimePoint:
        return cls(schedule.model_time(t), torch.exp(schedule.log_alpha(t)), schedule.std(t))

    def to(self, device: torch.device) -> _TimePoint:
        return _TimePoint(_move(self.model_time, device), _move(self.alpha, device), _move(self.std, device))


@dataclass
class _StepPlan:
    """Everything one multistep update needs that depends only on the schedule.

    Built on the host for every step before the loop (see ``_plan_steps``) and moved to the device
    once, so the loop never copies a value between host and device: upstream forms these small
    tensors per step (torch.tensor of device scalars, a table copied to the device per call), which
    on CUDA waits for the GPU every step. ``h_phi`` is [h_phi_1, B(h)] for the bh variants and the
    h_phi_k list for vary_coeff; ``predictor``/``corrector`` are rhos_p/rhos_c or the inverses A_p/A_c.
    """

    point: _TimePoint
    sigma_ratio: torch.Tensor
    rks: list[torch.Tensor]
    h_phi: list[torch.Tensor]
    predictor: torch.Tensor | None
    corrector: torch.Tensor | None

    def to(self, device: torch.device) -> _StepPlan:
        return _StepPlan(self.point.to(device), _move(self.sigma_ratio, device), _move(self.rks, device),
                         _move(self.h_phi, device), _move(self.predictor, device), _move(self.corrector, device))


def _ratios(schedule: NoiseSchedule, t_prev: list[torch.Tensor], h: torch.Tensor, lambda_prev_0: torch.Tensor,
            order: int) -> list[torch.Tensor]:
    """Ratios r_k of older log-SNR gaps to h."""
    return [((schedule.lambda_(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0] for i in range(1, order)]


def _bh_coefficients(rks: torch.Tensor, hh: torch.Tensor, order: int, use_corrector: bool, variant: str
                     ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """UniPC-B(h): B(h) = h (bh1) or e^h - 1 (bh2); rhos from a small linear solve."""
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows: list[torch.Tensor] = []
    coefficients: list[torch.Tensor] = []
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        coefficients.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_mat, b = torch.stack(rows), torch.tensor(coefficients)
    rhos_p = None
    if order > 1:  # there is history to weigh
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
    rhos_c = None
    if use_corrector:
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b)
    return [h_phi_1, b_h], rhos_p, rhos_c


def _vary_coefficients(rks: torch.Tensor, hh: torch.Tensor, use_corrector: bool
                       ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """UniPC with varying coefficients: inverses of a Vandermonde-like matrix."""
    k_count = len(rks)
    columns, col = [], torch.ones_like(rks)
    for k in range(1, k_count + 1):
        columns.append(col)
        col = col * rks / (k + 1)
    c_mat = torch.stack(columns, dim=1)
    h_phi_ks: list[torch.Tensor] = []
    h_phi_k, factorial = torch.expm1(hh), 1
    for k in range(1, k_count + 2):
        h_phi_ks.append(h_phi_k)
        h_phi_k = h_phi_k / hh - 1 / factorial
        factorial *= k + 1
    a_p = torch.linalg.inv(c_mat[:-1, :-1]) if k_count > 1 else None
    a_c = torch.linalg.inv(c_mat) if use_corrector else None
    return h_phi_ks, a_p, a_c


def _plan_step(schedule: NoiseSchedule, variant: str, t_prev: list[torch.Tensor], t: torch.Tensor, order: int,
               use_corrector: bool) -> _StepPlan:
    """One update's schedule-only quantities, in upstream's operations and order (so float32 results match)."""
    lambda_prev_0 = schedule.lambda_(t_prev[-1])
    h = schedule.lambda_(t) - lambda_prev_0
    ratios = _ratios(schedule, t_prev, h, lambda_prev_0, order)
    rks = torch.tensor([*ratios, 1.0])
    hh = -h[0]
    if variant == "vary_coeff":
        h_phi, predictor, corrector = _vary_coefficients(rks, hh, use_corrector)
    else:
        h_phi, predictor, corrector = _bh_coefficients(rks, hh, order, use_corrector, variant)
    point = _TimePoint.at(schedule, t)
    return _StepPlan(point, point.std / schedule.std(t_prev[-1]), ratios, h_phi, predictor, corrector)


def _plan_steps(schedule: NoiseSchedule, options: UniPCOptions, times: torch.Tensor, batch: int, ends_at_zero: bool
                ) -> tuple[_TimePoint, list[_StepPlan]]:
    """The start point and every update's plan, walking the same history of times as the loop.

    `ends_at_zero`: the last update (into time 0) returns the latest x0 estimate and has no plan."""
    steps = len(times) - 1
    vec_t = times[0].expand(batch)
    start, t_prev, plans = _TimePoint.at(schedule, vec_t), [vec_t], []
    for step in range(1, steps if ends_at_zero else steps + 1):
        vec_t = times[step].expand(batch)
        warmup = step < options.order
        order = step if warmup else _step_order(options, steps, step)
        plans.append(_plan_step(schedule, options.variant, t_prev, vec_t, order, warmup or step != steps))
        t_prev = t_prev + [vec_t] if warmup else t_prev[1:] + [vec_t]
    return start, plans


X0Predictor = Callable[[torch.Tensor, _TimePoint], torch.Tensor]


@dataclass
class _Step:
    """The device-side quantities one multistep update shares between predictor and corrector."""

    x: torch.Tensor
    model_prev_0: torch.Tensor
    plan: _StepPlan
    d1s: torch.Tensor | None

    def base(self, h_phi_1: torch.Tensor) -> torch.Tensor:
        nd, alpha_t = self.x.ndim, self.plan.point.alpha
        return _expand(self.plan.sigma_ratio, nd) * self.x - _expand(alpha_t * h_phi_1, nd) * self.model_prev_0

    def bh(self, predict_x0: X0Predictor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """UniPC-B(h) with the plan's rhos."""
        plan = self.plan
        h_phi_1, b_h = plan.h_phi
        x_base, scale = self.base(h_phi_1), _expand(plan.point.alpha * b_h, self.x.ndim)
        pred_res: torch.Tensor | int = 0
        if self.d1s is not None and plan.predictor is not None:
            pred_res = _weighted_sum(plan.predictor, self.d1s)
        x_t = x_base - scale * pred_res
        if plan.corrector is None:
            return x_t, None
        rhos_c = plan.corrector
        model_t = predict_x0(x_t, plan.point)
        corr_res = _weighted_sum(rhos_c[:-1], self.d1s) if self.d1s is not None else 0
        return x_base - scale * (corr_res + rhos_c[-1] * (model_t - self.model_prev_0)), model_t

    def vary_coeff(self, predict_x0: X0Predictor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """UniPC with varying coefficients, with the plan's inverses A_p / A_c."""
        plan, nd = self.plan, self.x.ndim
        alpha_t, h_phi_ks, k_count = plan.point.alpha, plan.h_phi, len(plan.rks) + 1
        x_base = self.base(h_phi_ks[0])
        x_t = x_base
        if self.d1s is not None and plan.predictor is not None:
            for k in range(k_count - 1):
                x_t = x_t - _expand(alpha_t * h_phi_ks[k + 1], nd) * _weighted_sum(plan.predictor[k], self.d1s)
        if plan.corrector is None:
            return x_t, None
        a_c = plan.corrector
        model_t = predict_x0(x_t, plan.point)
        x_t, k = x_base, 0
        if self.d1s is not None:  # without history k_count is 1 and there is nothing to add
            for k in range(k_count - 1):
                x_t = x_t - _expand(alpha_t * h_phi_ks[k + 1], nd) * _weighted_sum(a_c[k][:-1], self.d1s)
        last = _expand(alpha_t * h_phi_ks[k_count], nd) * ((model_t - self.model_prev_0) * a_c[k][-1])
        return x_t - last, model_t


def _update(predict_x0: X0Predictor, x: torch.Tensor, model_prev: list[torch.Tensor], plan: _StepPlan, variant: str
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One multistep update; returns x_t and, with the corrector, the model's x0 at t."""
    d1s = [(model_prev[-(i + 1)] - model_prev[-1]) / rk for i, rk in enumerate(plan.rks, start=1)]
    step = _Step(x, model_prev[-1], plan, torch.stack(d1s, dim=1) if d1s else None)
    return step.vary_coeff(predict_x0) if variant == "vary_coeff" else step.bh(predict_x0)


def _report(callback: StepCallback | None, x: torch.Tensor, i: int, denoised: torch.Tensor | None) -> None:
    """A1111 reports after every update; the last one has no fresh x0, so x itself is reported."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x if denoised is None else denoised})


def _host_copy(values: torch.Tensor) -> torch.Tensor:
    """The one read of a (device) schedule, taken before the loop: everything after it is host arithmetic."""
    return torch.tensor(values.detach().tolist(), dtype=values.dtype)


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
    All schedule arithmetic runs on the host before the loop (``_plan_steps``); the loop only
    evaluates the model and combines its outputs, so it never waits for the GPU.
    """
    steps = len(timesteps)
    _check_order(options, steps)
    schedule = DiscreteVPSchedule(_host_copy(alphas_cumprod))
    times = time_steps(schedule, options.skip_type, 1.0 if t_start is None else t_start, 1.0 / schedule.total_n,
                       steps, "cpu")
    start, plans = _plan_steps(schedule, options, times, x.shape[0], ends_at_zero=False)
    return _multistep(_vp_x0(model, as_args(extra_args)), x, start, plans, options, callback, ends_at_zero=False)


def _check_order(options: UniPCOptions, steps: int) -> None:
    if steps < options.order:
        raise ValueError(f"UniPC order must be < sampling steps: order {options.order}, {steps} steps")


def _vp_x0(model: Denoiser, args: Mapping[str, Any]) -> X0Predictor:
    """x0 from the eps model at a time point (model time (t - 1/N) * 1000)."""

    def predict(x: torch.Tensor, point: _TimePoint) -> torch.Tensor:
        eps = model(x, point.model_time, **args)
        return (x - _expand(point.std, x.ndim) * eps) / _expand(point.alpha, x.ndim)

    return predict


def _flow_x0(model: Denoiser, args: Mapping[str, Any]) -> X0Predictor:
    """The flow denoiser already estimates x0 at sigma = t."""

    def predict(x: torch.Tensor, point: _TimePoint) -> torch.Tensor:
        return model(x, point.model_time, **args)

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
    Deterministic: noise_sampler is never called. As in ``sample_unipc``, the sigmas are read once
    and every step's coefficients are planned on the host before the loop.
    """
    host_sigmas = _host_copy(sigmas) if sigmas.ndim == 1 else sigmas
    if (sigmas.ndim != 1 or host_sigmas.numel() < 2 or float(host_sigmas.max()) >= 1
            or float(host_sigmas.min()) < 0):
        raise ValueError(f"UniPC on a flow model needs 2+ sigmas in [0, 1), got {host_sigmas.tolist()}")
    _check_order(options, len(host_sigmas) - 1)
    ends_at_zero = float(host_sigmas[-1]) == 0
    start, plans = _plan_steps(FlowSchedule(), options, host_sigmas, x.shape[0], ends_at_zero)
    return _multistep(_flow_x0(model, as_args(extra_args)), x, start, plans, options, callback, ends_at_zero)


def _multistep(
    predict_x0: X0Predictor, x: torch.Tensor, start: _TimePoint, host_plans: list[_StepPlan], options: UniPCOptions,
    callback: StepCallback | None, ends_at_zero: bool,
) -> torch.Tensor:
    """The UniPC loop: one model call per planned update (the corrector's evaluation doubles as the
    next update's history; the last update skips the corrector). The plans move to the device once
    here, so the loop reads nothing back. `ends_at_zero`: one more, unplanned update into time 0,
    which returns the latest x0 estimate."""
    plans = [plan.to(x.device) for plan in host_plans]
    steps = len(plans) + (1 if ends_at_zero else 0)
    model_prev = [predict_x0(x, start.to(x.device))]
    for step, plan in enumerate(plans, start=1):
        warmup = step < options.order
        x, model_x = _update(predict_x0, x, model_prev, plan, options.variant)
        _report(callback, x, step - 1, model_x)
        if warmup:  # the corrector ran, so model_x is set
            model_prev.append(predict_x0(x, plan.point) if model_x is None else model_x)
            continue
        model_prev = model_prev[1:] + [model_prev[-1]]
        if step < steps:
            model_prev[-1] = predict_x0(x, plan.point) if model_x is None else model_x
    if ends_at_zero:
        x = model_prev[-1]
        _report(callback, x, steps - 1, None)
    return x


def _step_order(options: UniPCOptions, steps: int, step: int) -> int:
    """With lower_order_final the last steps drop to the orders the remaining steps allow."""
    return min(options.order, steps + 1 - step) if options.lower_order_final else options.order

"""Sigma schedules, as pure functions on CPU float32 tensors.

Every schedule reproduces the numbers A1111 v1.10 feeds its k-diffusion samplers, so the
same request yields the same latents. That is why the arithmetic is done in the same dtype
(float32 tensors, float64 Python scalars or numpy where A1111 uses them) and in the same order
as upstream, even where a simpler formula would be mathematically equal.

``model_sigmas`` is always the model's 1000-entry ascending sigma table (``sigma_table``).
Every schedule ends with 0.0 except ``kl_optimal``, which ends at ``sigma_min`` like upstream.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# NVIDIA's published Align-Your-Steps noise levels (11 values), as used by A1111.
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)

BETA_DEFAULT_ALPHA = 0.6  # A1111 option beta_dist_alpha
BETA_DEFAULT_BETA = 0.6  # A1111 option beta_dist_beta


# ---------------------------------------------------------------------------
# The model's discrete sigma table and the sigma <-> timestep mapping
# ---------------------------------------------------------------------------


def sigma_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The 1000 training sigmas, ascending, computed in float32 like the k-diffusion wrapper.

    A1111 keeps alphas_cumprod in float32 even for fp16 models; computing the table in float32
    gives sigma_min 0.029167533 / sigma_max 14.614642 for SD1/SDXL.
    """
    if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
        raise ValueError(
            f"alphas_cumprod must be a 1-D tensor with at least 2 entries, got shape {tuple(alphas_cumprod.shape)}"
        )
    acp = alphas_cumprod.detach().to(device="cpu", dtype=torch.float32)
    return ((1 - acp) / acp) ** 0.5


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of each sigma: linear interpolation in log-sigma between table entries.

    The UNet is fed these fractional timesteps, so they must match upstream exactly: the lower
    index is the last table entry <= sigma, clamped to [0, len - 2]; the weight is clamped to [0, 1].
    """
    log_sigma = sigma.to(log_sigmas.dtype).log()
    flat = log_sigma.reshape(-1, 1)
    below = (flat >= log_sigmas.reshape(1, -1)).sum(dim=1)
    low_idx = (below - 1).clamp(min=0, max=log_sigmas.numel() - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - flat[:, 0]) / (low - high)).clamp(0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Sigma at a fractional timestep: interpolate log-sigma between floor(t) and ceil(t)."""
    t = t.to(torch.float32)
    low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
    log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
    return log_sigma.exp()


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Samplers expect the schedule to end at sigma 0 (a fully denoised sample)."""
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _check_n(n: int) -> None:
    """A schedule needs at least one step; a loud error beats a silent empty tensor."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of sigmas n must be a positive int, got {n!r}")


def check_sigma_table(model_sigmas: torch.Tensor) -> torch.Tensor:
    """Table-based schedules index the model's table; validate it once, return it on CPU float32."""
    if model_sigmas is None or model_sigmas.ndim != 1 or model_sigmas.numel() < 2:
        shape = None if model_sigmas is None else tuple(model_sigmas.shape)
        raise ValueError(f"model_sigmas must be the model's 1-D ascending sigma table, got shape {shape}")
    return model_sigmas.detach().to(device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------------------
# Schedulers (A1111 sd_schedulers.py order)
# ---------------------------------------------------------------------------


def uniform(n: int, sigma_min: float, sigma_max: float, model_sigmas: torch.Tensor) -> torch.Tensor:
    """The model's own schedule (k-diffusion ``get_sigmas``): timesteps evenly spaced 999 -> 0.

    sigma_min/sigma_max are ignored, as upstream; they are accepted so all schedulers share a shape.
    """
    _check_n(n)
    table = check_sigma_table(model_sigmas)
    t = torch.linspace(table.numel() - 1, 0, n)
    return _append_zero(t_to_sigma(t, table.log()))


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    _check_n(n)
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    _check_n(n)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """A polynomial ramp (power rho) in log sigma; rho = 1 is the exponential schedule."""
    _check_n(n)
    ramp = torch.linspace(1, 0, n) ** rho
    log_min = math.log(sigma_min)
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - log_min) + log_min))


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, model_sigmas: torch.Tensor) -> torch.Tensor:
    """SGM's uniform: n+1 evenly spaced timesteps between t(sigma_max) and t(sigma_min), last dropped."""
    return _timestep_linspace(n, sigma_min, sigma_max, model_sigmas, drop_last=True)


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan(sigma). n+1 values ending at sigma_min: upstream appends no 0."""
    _check_n(n)
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    idx = torch.arange(n + 1)
    return torch.tan(idx / n * alpha_min + (1.0 - idx / n) * alpha_max)


def align_your_steps(n: int, sigma_min: float, sigma_max: float, is_sdxl: bool = False) -> torch.Tensor:
    """NVIDIA's Align Your Steps levels; other step counts are log-linearly interpolated.

    Ignores sigma_min/sigma_max like upstream. Computed in float64 numpy, then stored float32.
    """
    _check_n(n)
    levels = np.array(AYS_SDXL if is_sdxl else AYS_SD15, dtype=np.float64)
    if n != levels.size:
        levels = _loglinear_interp(levels, n)
    return torch.tensor(np.append(levels, 0.0), dtype=torch.float32)


def _loglinear_interp(decreasing: np.ndarray, count: int) -> np.ndarray:
    """Resample a decreasing sequence to ``count`` points, linearly in log space."""
    xs = np.linspace(0, 1, decreasing.size)
    ys = np.log(decreasing[::-1])
    new_ys = np.interp(np.linspace(0, 1, count), xs, ys)
    resampled: np.ndarray = np.exp(new_ys)[::-1].copy()
    return resampled


def simple(n: int, sigma_min: float, sigma_max: float, model_sigmas: torch.Tensor) -> torch.Tensor:
    """Every (len/n)-th table entry from the top (ComfyUI's "simple")."""
    _check_n(n)
    table = check_sigma_table(model_sigmas)
    stride = table.numel() / n
    picked = [float(table[-(1 + int(x * stride))]) for x in range(n)]
    return torch.tensor(picked + [0.0], dtype=torch.float32)


def normal(n: int, sigma_min: float, sigma_max: float, model_sigmas: torch.Tensor) -> torch.Tensor:
    """n evenly spaced timesteps from t(sigma_max) to t(sigma_min), both ends included."""
    return _timestep_linspace(n, sigma_min, sigma_max, model_sigmas, drop_last=False)


def _timestep_linspace(
    n: int, sigma_min: float, sigma_max: float, model_sigmas: torch.Tensor, *, drop_last: bool
) -> torch.Tensor:
    """Shared body of Normal and SGM Uniform, which differ only in n vs n+1 points."""
    _check_n(n)
    log_sigmas = check_sigma_table(model_sigmas).log()
    start = sigma_to_t(torch.tensor(sigma_max, dtype=torch.float32), log_sigmas)
    end = sigma_to_t(torch.tensor(sigma_min, dtype=torch.float32), log_sigmas)
    if drop_last:
        ts = torch.linspace(float(start), float(end), n + 1)[:-1]
    else:
        ts = torch.linspace(float(start), float(end), n)
    return _append_zero(t_to_sigma(ts, log_sigmas))


def ddim(n: int, sigma_min: float, sigma_max: float, model_sigmas: torch.Tensor) -> torch.Tensor:
    """Table entries 1, 1+s, 1+2s, ... (s = len // n), reversed. Length can differ from n+1 (n=30 -> 32)."""
    _check_n(n)
    table = check_sigma_table(model_sigmas)
    stride = max(table.numel() // n, 1)
    picked = [float(table[x]) for x in range(1, table.numel(), stride)]
    return torch.tensor(picked[::-1] + [0.0], dtype=torch.float32)


def beta(
    n: int,
    sigma_min: float,
    sigma_max: float,
    model_sigmas: torch.Tensor | None = None,
    alpha: float = BETA_DEFAULT_ALPHA,
    beta_param: float = BETA_DEFAULT_BETA,
) -> torch.Tensor:
    """"Beta Sampling is All You Need" (Lee et al. 2024), A1111's variant: linear in sigma.

    The Beta(alpha, beta) quantiles of 1 - linspace(0, 1, n) are mapped onto [sigma_min, sigma_max].
    model_sigmas is unused (upstream marks the scheduler as needing the model but does not use it).
    """
    _check_n(n)
    ts = 1 - np.linspace(0, 1, n)
    quantiles = [beta_ppf(float(p), alpha, beta_param) for p in ts]
    sigmas = [sigma_min + q * (sigma_max - sigma_min) for q in quantiles]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


# ---------------------------------------------------------------------------
# Beta distribution quantile (so scipy is not a run-time dependency)
# ---------------------------------------------------------------------------


def beta_ppf(p: float, a: float, b: float) -> float:
    """Quantile of Beta(a, b) at probability p, by bisection on the regularized incomplete beta.

    Bisection is slow but unconditionally convergent; 200 halvings reach float64 resolution, and the
    scheduler only needs a handful of quantiles per request.
    """
    if not (a > 0 and b > 0):
        raise ValueError(f"beta distribution parameters must be > 0, got alpha={a!r}, beta={b!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p!r}")
    if p in (0.0, 1.0):
        return p
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if regularized_incomplete_beta(mid, a, b) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) via the continued fraction, using the symmetry I_x(a,b) = 1 - I_{1-x}(b,a) for convergence."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """Modified Lentz evaluation of the incomplete-beta continued fraction."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in _beta_cf_terms(m, x, a, b):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            delta = c * d
            result *= delta
        if abs(delta - 1.0) < 1e-15:
            return result
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for x={x}, a={a}, b={b}")


def _beta_cf_terms(m: int, x: float, a: float, b: float) -> tuple[float, float]:
    """The even and odd numerators of the m-th continued-fraction step."""
    even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
    odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
    return even, odd

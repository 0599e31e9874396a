"""All 12 schedulers against A1111's formulas, re-derived here in float64 NumPy (independent of
samplers/schedules.py), for several step counts: relative error < 1e-6.

The formulas are the ones a1111-internals §4.3 states (sd_schedulers.py / k-diffusion); the
model table is SD1.5's (scaled_linear betas, float64 cumprod stored as float32).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samplers import registry

STEP_COUNTS = (1, 2, 7, 20, 33)
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]


def table() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas = np.cumprod(1.0 - betas).astype(np.float32).astype(np.float64)
    return np.sqrt((1 - alphas) / alphas)


SIGMAS = table()
LOG_SIGMAS = np.log(SIGMAS)
SMIN, SMAX = SIGMAS[0], SIGMAS[-1]


def sigma_to_t(sigma: float) -> float:
    dists = math.log(sigma) - LOG_SIGMAS
    low = min(int(np.cumsum(dists >= 0).argmax()), len(LOG_SIGMAS) - 2)
    w = (LOG_SIGMAS[low] - math.log(sigma)) / (LOG_SIGMAS[low] - LOG_SIGMAS[low + 1])
    w = min(max(w, 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def t_to_sigma(t: np.ndarray) -> np.ndarray:
    low, high = np.floor(t).astype(int), np.ceil(t).astype(int)
    w = t - low
    return np.exp((1 - w) * LOG_SIGMAS[low] + w * LOG_SIGMAS[high])


def zero(values) -> np.ndarray:
    return np.append(np.asarray(values, dtype=np.float64), 0.0)


def karras(n, rho=7.0):
    ramp = np.linspace(0, 1, n)
    lo, hi = SMIN ** (1 / rho), SMAX ** (1 / rho)
    return zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n):
    return zero(np.exp(np.linspace(math.log(SMAX), math.log(SMIN), n)))


def polyexponential(n, rho=1.0):
    ramp = np.linspace(1, 0, n) ** rho
    return zero(np.exp(ramp * (math.log(SMAX) - math.log(SMIN)) + math.log(SMIN)))


def uniform(n):
    return zero(t_to_sigma(np.linspace(999, 0, n)))


def sgm_uniform(n):
    return zero(t_to_sigma(np.linspace(sigma_to_t(SMAX), sigma_to_t(SMIN), n + 1)[:-1]))


def kl_optimal(n):
    i = np.arange(n + 1) / n
    return np.tan(i * math.atan(SMIN) + (1 - i) * math.atan(SMAX))


def align_your_steps(n):
    if n == len(AYS_SD15):
        return zero(AYS_SD15)
    logs = np.log(AYS_SD15[::-1])
    return zero(np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(logs)), logs))[::-1])


def simple(n):
    step = 1000 / n
    return zero([SIGMAS[-(1 + int(x * step))] for x in range(n)])


def normal(n):
    return zero(t_to_sigma(np.linspace(sigma_to_t(SMAX), sigma_to_t(SMIN), n)))


def ddim(n):
    step = max(1000 // n, 1)
    return zero([SIGMAS[i] for i in range(1, 1000, step)][::-1])


def beta(n, a=0.6, b=0.6):
    stats = pytest.importorskip("scipy.stats")
    q = stats.beta.ppf(1 - np.linspace(0, 1, n), a, b)
    return zero(SMIN + q * (SMAX - SMIN))


FORMULAS = {
    "uniform": uniform, "karras": karras, "exponential": exponential, "polyexponential": polyexponential,
    "sgm_uniform": sgm_uniform, "kl_optimal": kl_optimal, "align_your_steps": align_your_steps,
    "simple": simple, "normal": normal, "ddim": ddim, "beta": beta,
}


def ours(scheduler: str, steps: int, sampler: str = "Euler") -> np.ndarray:
    model_sigmas = torch.tensor(SIGMAS, dtype=torch.float32)
    found = registry.compute_sigmas(
        registry.find_sampler(sampler), registry.find_scheduler(scheduler), steps, model_sigmas
    )
    return found.to(torch.float64).numpy()


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    scale = np.maximum(np.abs(expected), 1e-30)
    assert np.max(np.abs(got - expected) / scale * (expected != 0)) < 1e-6, (got, expected)
    assert np.array_equal(got == 0, expected == 0)


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("scheduler", sorted(FORMULAS))
def test_scheduler_matches_a1111_formula(scheduler, steps):
    assert_close(ours(scheduler, steps), FORMULAS[scheduler](steps))


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_automatic_is_the_samplers_default_or_uniform(steps):
    assert_close(ours("automatic", steps, "Euler"), uniform(steps))
    assert_close(ours("automatic", steps, "DPM++ 2M"), karras(steps))
    assert_close(ours("automatic", steps, "DPM++ 2M SDE"), exponential(steps))


@pytest.mark.parametrize("steps", (7, 20))
def test_discard_next_to_last_sigma(steps):
    """DPM2's option: one more step is scheduled, then the second-to-last value is dropped."""
    expected = karras(steps + 1)
    expected = np.append(expected[:-2], expected[-1])
    assert_close(ours("automatic", steps, "DPM2"), expected)

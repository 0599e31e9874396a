"""The rectified-flow forms of the ancestral and SDE samplers (samplers.flow).

On a flow model x_s = (1 - s) x0 + s noise. Checks: the ancestral step against a hand
computation; eta = 0 reducing to the flow Euler (DDIM) step; one noisy step landing exactly on
the flow marginal at the next sigma for a denoiser that knows x0 (where the variance-exploding
step does not); whole runs on Gaussian data ending on the data distribution; determinism.
"""

from __future__ import annotations

import math

import pytest
import torch
from sampler_toys import SeededNoise

from samplers import flow, kdiffusion
from samplers.ancestral import sample_euler_ancestral
from samplers.registry import FLOW_FORMS, SAMPLERS, find_sampler, flow_call_kwargs, flow_form, flow_sampler_names

NOISY = ["DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "DPM2 a"]
N = 200_000


class KnownX0:
    """The denoiser of a model whose data is the single point `x0`: D(x, s) = x0."""

    def __init__(self, x0: float) -> None:
        self.x0 = x0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        return torch.full_like(x, self.x0)


class FlowGaussian:
    """Exact flow denoiser for data ~ N(mean, std^2): E[x0 | (1 - s) x0 + s n]."""

    def __init__(self, mean: float = 0.5, std: float = 0.3) -> None:
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        a = 1 - s
        gain = a * self.std**2 / (a**2 * self.std**2 + s**2)
        return self.mean + gain * (x - a * self.mean)


def _run(name: str, model, x: torch.Tensor, sigmas: torch.Tensor, noise, eta: float | None = None) -> torch.Tensor:
    sampler = find_sampler(name)
    kwargs = flow_call_kwargs(sampler, sigmas, eta=eta, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                                 s_noise=1.0, noise_sampler=noise)
    form = flow_form(sampler)
    assert form is not None
    if form.needs_sigma_below_one:
        sigmas = flow.first_sigma_below_one(sigmas, 0.9999)
    return form.function(model, x, sigmas, **kwargs)


def _flux_like_sigmas(steps: int, shift: float = 1.15) -> torch.Tensor:
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
    sigmas = math.exp(shift) / (math.exp(shift) + 1 / t - 1)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


def test_every_sampler_has_a_flow_form():
    assert flow_sampler_names() == ("DPM++ 2M", *NOISY[:-2], "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a",
                                    "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
                                    "LCM")
    assert all(flow_form(sampler) is not None for sampler in SAMPLERS)
    assert set(FLOW_FORMS) == set(flow_sampler_names())
    below_one = {name for name, form in FLOW_FORMS.items() if form.needs_sigma_below_one}
    assert below_one == {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "UniPC", "DPM fast",
                         "DPM adaptive"}


def test_rf_ancestral_step_matches_a_hand_computation():
    s, s_next = torch.tensor(0.8), torch.tensor(0.5)
    sigma_down, scale, std = flow.rf_ancestral_step(s, s_next, 1.0)
    down = 0.5 * (1 + (0.5 / 0.8 - 1))  # 0.3125
    assert float(sigma_down) == pytest.approx(down)
    assert float(scale) == pytest.approx(0.5 / (1 - down))
    assert float(std) == pytest.approx(math.sqrt(0.25 - down**2 * 0.25 / (1 - down) ** 2))
    sigma_down, scale, std = flow.rf_ancestral_step(s, s_next, 0.0)
    assert (float(sigma_down), float(scale), float(std)) == pytest.approx((0.5, 1.0, 0.0))
    sigma_down, scale, std = flow.rf_ancestral_step(s, s_next, 10.0)  # sigma_down clamped at 0: full renoise
    assert (float(sigma_down), float(scale), float(std)) == pytest.approx((0.0, 0.5, 0.5))


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"])
def test_eta_zero_is_the_flow_euler_step(name):
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.8, 0.5])
    model = FlowGaussian()
    ours = _run(name, model, x, sigmas, SeededNoise(x.shape, 1), eta=0.0)
    euler = kdiffusion.sample_euler(model, x, sigmas, noise_sampler=SeededNoise(x.shape, 1))
    assert torch.allclose(ours, euler, atol=1e-6)
    denoised = model(x, sigmas[:1])
    assert torch.allclose(ours, 0.625 * x + 0.375 * denoised, atol=1e-6)


def test_dpm2_ancestral_at_eta_zero_is_dpm2():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.8, 0.5])
    ours = _run("DPM2 a", FlowGaussian(), x, sigmas, SeededNoise(x.shape, 1), eta=0.0)
    dpm2 = kdiffusion.sample_dpm_2(FlowGaussian(), x, sigmas, noise_sampler=SeededNoise(x.shape, 1))
    assert torch.allclose(ours, dpm2, atol=1e-6)


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("name", NOISY)
def test_one_noisy_step_lands_on_the_flow_marginal(name, eta):
    """x at 0.8 drawn from the marginal of data point 2.0; after one step to 0.35 its mean must be
    (1 - 0.35) * 2 and its noise standard deviation 0.35."""
    x0, s, s_next = 2.0, 0.8, 0.35
    x = (1 - s) * x0 + s * torch.randn(N, generator=torch.Generator().manual_seed(7))
    out = _run(name, KnownX0(x0), x, torch.tensor([s, s_next]), SeededNoise((N,), 8), eta=eta)
    assert float(out.mean()) == pytest.approx((1 - s_next) * x0, abs=0.01)
    assert float(out.std()) == pytest.approx(s_next, rel=0.01)


def test_the_variance_exploding_ancestral_step_misses_that_marginal():
    x0, s, s_next = 2.0, 0.8, 0.35
    x = (1 - s) * x0 + s * torch.randn(N, generator=torch.Generator().manual_seed(7))
    out = sample_euler_ancestral(KnownX0(x0), x, torch.tensor([s, s_next]), noise_sampler=SeededNoise((N,), 8))
    assert abs(float(out.mean()) - (1 - s_next) * x0) > 0.1


@pytest.mark.parametrize("name", NOISY)
def test_a_whole_run_ends_on_the_data_distribution(name):
    """From pure noise over a Flux-like schedule with the exact denoiser of N(0.5, 0.3^2) data:
    with many steps every sampler ends on the data distribution (with few, the noisy ones come
    out narrower, as on any model)."""
    model = FlowGaussian()
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(3))
    out = _run(name, model, x, _flux_like_sigmas(400), SeededNoise(x.shape, 4))
    assert torch.isfinite(out).all()
    assert float(out.mean()) == pytest.approx(model.mean, abs=0.01)
    assert float(out.std()) == pytest.approx(model.std, rel=0.05)


@pytest.mark.parametrize("name", NOISY)
def test_same_noise_same_result(name):
    x = torch.randn(256, generator=torch.Generator().manual_seed(3))
    sigmas = _flux_like_sigmas(6)
    first = _run(name, FlowGaussian(), x, sigmas, SeededNoise(x.shape, 4))
    again = _run(name, FlowGaussian(), x, sigmas, SeededNoise(x.shape, 4))
    other = _run(name, FlowGaussian(), x, sigmas, SeededNoise(x.shape, 5))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_half_log_snr_samplers_need_the_first_sigma_below_one():
    sigmas = _flux_like_sigmas(4)
    assert float(sigmas[0]) == 1.0
    x = torch.randn(8)
    with pytest.raises(ValueError, match="below 1"):
        flow.sample_dpmpp_2m_sde_rf(FlowGaussian(), x, sigmas, noise_sampler=SeededNoise(x.shape, 1))
    moved = flow.first_sigma_below_one(sigmas, 0.99997)
    assert float(moved[0]) == pytest.approx(0.99997) and torch.equal(moved[1:], sigmas[1:])
    assert float(sigmas[0]) == 1.0  # the caller's schedule is left alone
    assert flow.first_sigma_below_one(sigmas[1:], 0.99997) is not None
    assert torch.equal(flow.first_sigma_below_one(sigmas[1:], 0.99997), sigmas[1:])
    with pytest.raises(ValueError, match="between 0 and 1"):
        flow.first_sigma_below_one(sigmas, 1.0)

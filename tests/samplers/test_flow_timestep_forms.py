"""The rectified-flow forms of DDIM, PLMS, UniPC and LCM (samplers.flow_ddim, unipc.sample_unipc_rf).

On a flow model x_s = (1 - s) x0 + s noise. Checks: DDIM at eta = 0 is the flow Euler step, its
noise width against a hand computation, and one noisy step landing on the flow marginal; LCM's
one step is the x0 estimate and its re-noise a hand computation; UniPC and PLMS exact for a
model that knows x0, far closer than Euler to the exact probability-flow ODE of Gaussian data,
with the model-call counts A1111's step counts imply; determinism.
"""

from __future__ import annotations

import math

import pytest
import torch
from sampler_toys import SeededNoise
from test_flow_samplers import FlowGaussian, KnownX0, N, _flux_like_sigmas, _run

from samplers import dpm_solver, flow_ddim, kdiffusion, restart, unipc
from samplers.registry import FLOW_FORMS, find_sampler, flow_call_kwargs, flow_form

DETERMINISTIC = ["DDIM", "PLMS", "UniPC"]
VARIANTS = [unipc.UniPCOptions(variant=v, order=o) for v in unipc.VARIANTS for o in (1, 2, 3)]


class Counting:
    """Wraps a denoiser, counts its calls and keeps its last answer."""

    def __init__(self, model) -> None:
        self.model, self.calls, self.last = model, 0, None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: object) -> torch.Tensor:
        self.calls += 1
        self.last = self.model(x, sigma, **extra)
        return self.last


def exact_flow(model: FlowGaussian, x: torch.Tensor, s_from: float, s_to: float) -> torch.Tensor:
    """Where the probability-flow ODE of N(mean, std^2) data carries x from s_from to s_to: the
    monotone affine map between the two Gaussian marginals."""
    a, a_to = 1 - s_from, 1 - s_to
    scale = math.sqrt(a_to**2 * model.std**2 + s_to**2) / math.sqrt(a**2 * model.std**2 + s_from**2)
    return a_to * model.mean + (x - a * model.mean) * scale


def test_the_timestep_samplers_and_lcm_have_flow_forms():
    for name in ("DDIM", "PLMS", "UniPC", "LCM"):
        assert flow_form(find_sampler(name)) is FLOW_FORMS[name]
    assert FLOW_FORMS["UniPC"].needs_sigma_below_one
    assert not FLOW_FORMS["DDIM"].needs_sigma_below_one and not FLOW_FORMS["LCM"].needs_sigma_below_one


def test_flow_call_kwargs_give_no_alphas_cumprod():
    noise = SeededNoise((4,), 1)
    sigmas = torch.tensor([0.9, 0.5, 0.0])
    common = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 1.0, "s_noise": 1.0, "noise_sampler": noise}
    assert flow_call_kwargs(find_sampler("DDIM"), sigmas, eta=None, **common) == {"eta": 0.0, "noise_sampler": noise}
    assert flow_call_kwargs(find_sampler("PLMS"), sigmas, eta=0.7, **common) == {"noise_sampler": noise}
    assert flow_call_kwargs(find_sampler("LCM"), sigmas, eta=None, **common) == {"noise_sampler": noise}
    options = unipc.UniPCOptions(variant="bh2", order=2)
    kwargs = flow_call_kwargs(find_sampler("UniPC"), sigmas, eta=None, unipc_options=options, **common)
    assert kwargs == {"options": options, "noise_sampler": noise}
    assert flow_call_kwargs(find_sampler("Euler a"), sigmas, eta=None, **common) == {"eta": 1.0, "noise_sampler": noise}


def test_ddim_at_eta_zero_is_flow_euler_and_draws_no_noise():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    sigmas = _flux_like_sigmas(6)
    noise = SeededNoise(x.shape, 1)
    ddim = flow_ddim.sample_ddim_rf(FlowGaussian(), x, sigmas, noise_sampler=noise, eta=0.0)
    euler = kdiffusion.sample_euler(FlowGaussian(), x, sigmas, noise_sampler=SeededNoise(x.shape, 1))
    assert torch.allclose(ddim, euler, atol=1e-6) and noise.calls == []


def test_ddim_noise_width_matches_a_hand_computation():
    s, s_next, eta = torch.tensor(0.8), torch.tensor(0.5), 0.6
    ratio = (0.2 * 0.5) / (0.5 * 0.8)  # alpha s' / (alpha' s)
    assert float(flow_ddim.ddim_noise_width(s, s_next, eta)) == pytest.approx(0.6 * 0.5 * math.sqrt(1 - ratio**2))
    assert float(flow_ddim.ddim_noise_width(s, torch.tensor(0.0), 1.0)) == 0.0
    assert float(flow_ddim.ddim_noise_width(torch.tensor(1.0), s_next, 1.0)) == pytest.approx(0.5)  # from pure noise
    x, denoised, z = torch.tensor([0.3]), torch.tensor([1.5]), torch.tensor([-0.7])
    c = 0.6 * 0.5 * math.sqrt(1 - ratio**2)
    eps = (0.3 - 0.2 * 1.5) / 0.8
    expected = 0.5 * 1.5 + math.sqrt(0.25 - c**2) * eps + c * -0.7
    assert float(flow_ddim.ddim_rf_step(x, denoised, s, s_next, eta, z)) == pytest.approx(expected)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_one_noisy_ddim_step_lands_on_the_flow_marginal(eta):
    x0, s, s_next = 2.0, 0.8, 0.35
    x = (1 - s) * x0 + s * torch.randn(N, generator=torch.Generator().manual_seed(7))
    out = _run("DDIM", KnownX0(x0), x, torch.tensor([s, s_next]), SeededNoise((N,), 8), eta=eta)
    assert float(out.mean()) == pytest.approx((1 - s_next) * x0, abs=0.01)
    assert float(out.std()) == pytest.approx(s_next, rel=0.01)


def test_ddim_with_eta_one_ends_on_the_data_distribution():
    model = FlowGaussian()
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(3))
    out = _run("DDIM", model, x, _flux_like_sigmas(400), SeededNoise(x.shape, 4), eta=1.0)
    assert float(out.mean()) == pytest.approx(model.mean, abs=0.01)
    assert float(out.std()) == pytest.approx(model.std, rel=0.05)


def test_lcm_one_step_is_the_x0_estimate_and_it_renoises_on_the_flow_path():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    model = FlowGaussian()
    noise = SeededNoise(x.shape, 1)
    assert torch.equal(_run("LCM", model, x, torch.tensor([1.0, 0.0]), noise), model(x, torch.ones(64)))
    assert noise.calls == []
    two = _run("LCM", model, x, torch.tensor([1.0, 0.4, 0.0]), SeededNoise(x.shape, 1))
    z = SeededNoise(x.shape, 1)(1.0, 0.4)
    renoised = 0.6 * model(x, torch.ones(64)) + 0.4 * z
    assert torch.allclose(two, model(renoised, torch.full((64,), 0.4)), atol=1e-6)


@pytest.mark.parametrize("name", ["PLMS", "UniPC", "DDIM"])
def test_deterministic_forms_are_exact_for_a_model_that_knows_x0(name):
    """With D(x, s) = x0 the flow ODE is the straight line to x0: x_s' = x0 + s'/s (x - x0)."""
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.9, 0.7, 0.45, 0.2, 0.1])
    out = _run(name, KnownX0(1.5), x, sigmas, SeededNoise(x.shape, 1))
    assert torch.allclose(out, 1.5 + (0.1 / 0.9) * (x - 1.5), atol=1e-5)


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: f"{o.variant}-{o.order}")
def test_unipc_every_variant_is_exact_for_a_model_that_knows_x0(options):
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.9, 0.7, 0.45, 0.2, 0.1])
    out = unipc.sample_unipc_rf(KnownX0(-0.5), x, sigmas, options=options)
    assert torch.allclose(out, -0.5 + (0.1 / 0.9) * (x + 0.5), atol=1e-5)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_multistep_forms_beat_euler_on_the_exact_flow(name):
    """Gaussian data, 16 steps from 0.8 to 0.1: Euler is 0.17 off the exact ODE solution; PLMS
    and UniPC (default bh1, order 3) at least 10 times closer; DDIM is Euler."""
    model = FlowGaussian(std=1.0)
    x = 0.1 + 0.8 * torch.randn(1000, generator=torch.Generator().manual_seed(0)).double()
    sigmas = torch.linspace(0.8, 0.1, 17, dtype=torch.float64)
    exact = exact_flow(model, x, 0.8, 0.1)
    euler = kdiffusion.sample_euler(model, x, sigmas, noise_sampler=SeededNoise(x.shape, 1))
    euler_error = float((euler - exact).abs().max())
    error = float((_run(name, model, x, sigmas, SeededNoise(x.shape, 1)) - exact).abs().max())
    assert euler_error > 0.1
    assert error < euler_error / 10 if name != "DDIM" else error == pytest.approx(euler_error)


def test_unipc_converges_faster_than_first_order():
    model = FlowGaussian(std=1.0)
    x = 0.1 + 0.8 * torch.randn(1000, generator=torch.Generator().manual_seed(0)).double()
    exact = exact_flow(model, x, 0.8, 0.1)
    errors = [float((unipc.sample_unipc_rf(model, x, torch.linspace(0.8, 0.1, n + 1, dtype=torch.float64))
                     - exact).abs().max()) for n in (8, 32)]
    assert errors[1] < errors[0] / 6  # a first-order method gains 4x over two doublings


def test_unipc_into_sigma_zero_makes_one_call_per_step_and_returns_the_x0_estimate():
    """The last call is the corrector's at sigma 0.1 (UniPC's x0 estimate there); the order-1
    step into 0 is that estimate."""
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.95, 0.6, 0.3, 0.1, 0.0])
    model = Counting(FlowGaussian())
    out = unipc.sample_unipc_rf(model, x, sigmas)
    assert model.calls == 4 and torch.isfinite(out).all() and torch.equal(out, model.last)
    one = unipc.sample_unipc_rf(FlowGaussian(), x, torch.tensor([0.9, 0.0]), options=unipc.UniPCOptions(order=1))
    assert torch.equal(one, FlowGaussian()(x, torch.full((64,), 0.9)))


def test_unipc_refuses_sigma_one_and_too_few_steps():
    x = torch.randn(8)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        unipc.sample_unipc_rf(FlowGaussian(), x, torch.tensor([1.0, 0.5, 0.2, 0.0]))
    with pytest.raises(ValueError, match="order must be < sampling steps"):
        unipc.sample_unipc_rf(FlowGaussian(), x, torch.tensor([0.9, 0.5, 0.0]))


def test_plms_first_step_makes_two_calls_then_one_per_step():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    model = Counting(FlowGaussian())
    flow_ddim.sample_plms_rf(model, x, _flux_like_sigmas(6)[1:])
    assert model.calls == 6
    one = Counting(FlowGaussian())
    last = FlowGaussian()(x, torch.full((64,), 0.9))
    assert torch.allclose(flow_ddim.sample_plms_rf(one, x, torch.tensor([0.9, 0.0])), last, atol=1e-6)
    assert one.calls == 1


@pytest.mark.parametrize("name", ["DDIM", "LCM"])
def test_same_noise_same_result(name):
    x = torch.randn(256, generator=torch.Generator().manual_seed(3))
    sigmas = _flux_like_sigmas(6)
    first = _run(name, FlowGaussian(), x, sigmas, SeededNoise(x.shape, 4), eta=1.0)
    again = _run(name, FlowGaussian(), x, sigmas, SeededNoise(x.shape, 4), eta=1.0)
    other = _run(name, FlowGaussian(), x, sigmas, SeededNoise(x.shape, 5), eta=1.0)
    assert torch.equal(first, again) and not torch.equal(first, other)


# ---------------------------------------------------------------------------
# DPM fast / adaptive (samplers.dpm_solver with the FLOW schedule)
# ---------------------------------------------------------------------------


def test_flow_schedule_of_dpm_solver_is_lambda_with_alpha_one_minus_sigma():
    sigma = torch.tensor([0.2, 0.5, 0.9])
    t = dpm_solver.FLOW.time(sigma)
    assert torch.allclose(t, torch.log((1 - sigma) / sigma))
    assert torch.allclose(dpm_solver.FLOW.model_sigma(t), sigma)
    assert torch.allclose(dpm_solver.FLOW.noise_to_signal(t), sigma / (1 - sigma))
    x, x0 = torch.tensor([0.7, -0.2, 1.1]), torch.tensor([1.0, 2.0, -1.0])
    eps = (x - (1 - sigma) * x0) / sigma
    assert torch.allclose(dpm_solver.FLOW.x0(x, eps, t), x0)


@pytest.mark.parametrize("name", ["DPM fast", "DPM adaptive"])
def test_dpm_solvers_are_exact_for_a_model_that_knows_x0(name):
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    kwargs = {"sigma_min": 0.1, "sigma_max": 0.9, "eta": 0.0, "noise_sampler": SeededNoise(x.shape, 1)}
    if name == "DPM fast":
        out = dpm_solver.sample_dpm_fast_rf(KnownX0(1.5), x, n=7, **kwargs)
    else:
        out = dpm_solver.sample_dpm_adaptive_rf(KnownX0(1.5), x, **kwargs)
    assert torch.allclose(out, 1.5 + (0.1 / 0.9) * (x - 1.5), atol=1e-5)


def test_dpm_fast_converges_on_the_exact_flow():
    """n model calls from 0.8 to 0.1 on Gaussian data: third order, so 16 calls are over 20 times
    closer to the exact ODE solution than 4 (measured: 0.32, 0.05, 0.013)."""
    model = FlowGaussian(std=1.0)
    x = 0.1 + 0.8 * torch.randn(1000, generator=torch.Generator().manual_seed(0)).double()
    exact = exact_flow(model, x, 0.8, 0.1)
    errors = [float((dpm_solver.sample_dpm_fast_rf(model, x, n=n, sigma_min=0.1, sigma_max=0.8,
                                                   noise_sampler=SeededNoise(x.shape, 1)) - exact).abs().max())
              for n in (4, 16)]
    assert errors[1] < errors[0] / 20 and errors[1] < 0.02
    adaptive = dpm_solver.sample_dpm_adaptive_rf(model, x, sigma_min=0.1, sigma_max=0.8,
                                                 noise_sampler=SeededNoise(x.shape, 1))
    assert float((adaptive - exact).abs().max()) < 0.01


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_noisy_dpm_fast_stays_on_the_flow_marginal(eta):
    """Two first-order steps 0.8 -> 0.5 -> 0.35 with fresh noise in the first for a model that
    knows x0: the result has the flow marginal's mean and spread at 0.35."""
    x0 = 2.0
    x = 0.2 * x0 + 0.8 * torch.randn(N, generator=torch.Generator().manual_seed(7))
    out = dpm_solver.sample_dpm_fast_rf(KnownX0(x0), x, n=2, sigma_min=0.35, sigma_max=0.8, eta=eta,
                                        noise_sampler=SeededNoise((N,), 8))
    assert float(out.mean()) == pytest.approx(0.65 * x0, abs=0.01)
    assert float(out.std()) == pytest.approx(0.35, rel=0.01)


@pytest.mark.parametrize("name", ["DPM fast", "DPM adaptive"])
def test_dpm_solvers_end_on_the_data_distribution(name):
    model = FlowGaussian()
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(3))
    kwargs = {"sigma_min": 1e-4, "sigma_max": 0.9999, "eta": 1.0, "noise_sampler": SeededNoise(x.shape, 4)}
    if name == "DPM fast":
        out = dpm_solver.sample_dpm_fast_rf(model, x, n=60, **kwargs)
    else:
        out = dpm_solver.sample_dpm_adaptive_rf(model, x, **kwargs)
    assert float(out.mean()) == pytest.approx(model.mean, abs=0.01)
    assert float(out.std()) == pytest.approx(model.std, rel=0.05)


def test_dpm_solvers_refuse_an_interval_touching_zero_or_one():
    x = torch.randn(8)
    for low, high in ((0.0, 0.5), (0.1, 1.0)):
        with pytest.raises(ValueError, match=r"need \(0, 1\)"):
            dpm_solver.sample_dpm_fast_rf(FlowGaussian(), x, n=3, sigma_min=low, sigma_max=high,
                                          noise_sampler=SeededNoise(x.shape, 1))


def test_flow_call_kwargs_give_dpm_solvers_the_end_sigma():
    sigmas = torch.tensor([0.9999, 0.6, 0.2, 0.0])
    common = {"eta": None, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 1.0, "s_noise": 1.0, "noise_sampler": None}
    kwargs = flow_call_kwargs(find_sampler("DPM fast"), sigmas, end_sigma=3e-4, **common)
    assert kwargs["n"] == 3 and kwargs["sigma_min"] == 3e-4 and kwargs["sigma_max"] == pytest.approx(0.9999)
    assert FLOW_FORMS["DPM fast"].needs_sigma_below_one and FLOW_FORMS["DPM adaptive"].needs_sigma_below_one


# ---------------------------------------------------------------------------
# Restart (samplers.restart.sample_restart_rf)
# ---------------------------------------------------------------------------


def test_restart_levels_on_flow_are_a1111s_as_noise_to_signal():
    assert restart.RF_RESTART_MIN_SIGMA == pytest.approx(1 / 11)
    assert restart.RF_RESTART_MAX_SIGMA == pytest.approx(2 / 3)
    low, high = restart.RF_RESTART_MIN_SIGMA, restart.RF_RESTART_MAX_SIGMA
    assert (low / (1 - low), high / (1 - high)) == pytest.approx((restart.RESTART_MIN_SIGMA, restart.RESTART_MAX_SIGMA))


def test_rf_renoise_lands_on_the_higher_flow_marginal():
    x0, low, high = 2.0, 0.1, 0.6
    x = (1 - low) * x0 + low * torch.randn(N, generator=torch.Generator().manual_seed(7))
    z = torch.randn(N, generator=torch.Generator().manual_seed(8))
    out = restart.rf_renoise(x, torch.tensor(low), torch.tensor(high), z)
    assert float(out.mean()) == pytest.approx((1 - high) * x0, abs=0.01)
    assert float(out.std()) == pytest.approx(high, rel=0.01)


def test_restart_below_20_steps_is_heun():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    sigmas = _flux_like_sigmas(8)
    noise = SeededNoise(x.shape, 1)
    ours = _run("Restart", FlowGaussian(), x, sigmas, noise)
    heun = kdiffusion.sample_heun(FlowGaussian(), x, sigmas, noise_sampler=SeededNoise(x.shape, 1))
    assert torch.allclose(ours, heun, atol=1e-6) and noise.calls == []


def test_restart_pushes_back_up_and_ends_on_the_data_distribution():
    """30 steps: one restart segment (9 Heun steps from 2/3 down to 1/11 once the main walk has
    reached 1/11), one noise draw; 60 steps: two. Both end where plain Heun does on the data
    distribution (Heun itself is 5 % narrow at 30 steps on this toy: 0.285 for 0.3)."""
    model = FlowGaussian()
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(3))
    for steps, restarts in ((30, 1), (60, 2)):
        noise = SeededNoise(x.shape, 4)
        out = _run("Restart", model, x, _flux_like_sigmas(steps), noise)
        assert len(noise.calls) == restarts
        low, high = noise.calls[0]
        assert low == pytest.approx(1 / 11, abs=0.03) and high == pytest.approx(2 / 3, abs=0.05)
        heun = kdiffusion.sample_heun(model, x, _flux_like_sigmas(steps), noise_sampler=SeededNoise(x.shape, 1))
        assert float(out.mean()) == pytest.approx(model.mean, abs=0.01)
        assert float(out.std()) == pytest.approx(float(heun.std()), abs=0.005)
    assert float(out.std()) == pytest.approx(model.std, rel=0.02)
    again = _run("Restart", model, x, _flux_like_sigmas(60), SeededNoise(x.shape, 4))
    assert torch.equal(out, again)


# ---------------------------------------------------------------------------
# DDIM CFG++ (samplers.flow_ddim.sample_ddim_cfgpp_rf)
# ---------------------------------------------------------------------------


class TwoEstimates:
    """A guided flow denoiser stand-in: the guided x0 is `guided`, the unconditional one `uncond`."""

    def __init__(self, guided: float, uncond: float) -> None:
        self.guided, self.uncond = guided, uncond
        self.last_uncond_x0: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        self.last_uncond_x0 = torch.full_like(x, self.uncond)
        return torch.full_like(x, self.guided)


def test_ddim_cfgpp_step_matches_a_hand_computation():
    x = torch.tensor([0.3, -1.2])
    out = flow_ddim.sample_ddim_cfgpp_rf(TwoEstimates(1.5, 0.5), x, torch.tensor([0.8, 0.5]))
    eps_uncond = (x - 0.2 * 0.5) / 0.8
    assert torch.allclose(out, 0.5 * 1.5 + 0.5 * eps_uncond)
    ddim = flow_ddim.sample_ddim_rf(TwoEstimates(1.5, 0.5), x, torch.tensor([0.8, 0.5]))
    assert not torch.allclose(out, ddim)


def test_ddim_cfgpp_with_the_same_estimates_is_ddim():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    sigmas = _flux_like_sigmas(5)
    same = TwoEstimates(0.7, 0.7)
    assert torch.allclose(flow_ddim.sample_ddim_cfgpp_rf(same, x, sigmas), flow_ddim.sample_ddim_rf(same, x, sigmas),
                          atol=1e-6)
    noisy = flow_ddim.sample_ddim_cfgpp_rf(same, x, sigmas, noise_sampler=SeededNoise(x.shape, 2), eta=1.0)
    assert torch.allclose(noisy, flow_ddim.sample_ddim_rf(same, x, sigmas, noise_sampler=SeededNoise(x.shape, 2),
                                                          eta=1.0), atol=1e-6)


def test_ddim_cfgpp_scales_the_guidance_and_needs_the_uncond_estimate():
    assert FLOW_FORMS["DDIM CFG++"].guidance_factor == pytest.approx(1 / 12.5)
    assert all(form.guidance_factor == 1.0 for name, form in FLOW_FORMS.items() if name != "DDIM CFG++")
    with pytest.raises(ValueError, match="last_uncond_x0"):
        flow_ddim.sample_ddim_cfgpp_rf(KnownX0(1.0), torch.zeros(4), torch.tensor([0.8, 0.5, 0.0]))

"""Every sampler k-diffusion has, run by ours and by k-diffusion's own function on the same
tiny model (the embedded SD1 UNet through our CompVis wrapper and CFG), sigmas and noise.

Ours run through the registry exactly as the pipeline calls them (sampler_call_kwargs); the
reference gets the arguments A1111 passes. Required: max abs difference < 1e-4 (in practice
they are bit-identical). SDE samplers use Brownian-tree noise on both sides: k-diffusion's
BrownianTreeNoiseSampler and ours, seeded per image.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from samplers.brownian import BrownianTreeNoise, schedule_interval
from samplers.registry import compute_sigmas, find_sampler, find_scheduler, sampler_call_kwargs

pytest.importorskip("torchsde")
pytest.importorskip("scipy")
pytest.importorskip("torchdiffeq")
from kdiffusion_reference import load_sampling, sampling_path  # noqa: E402

if sampling_path() is None:
    pytest.skip("k-diffusion (test extra) is not installed", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde, at the tree ends (A1111 too)

SHAPE = (2, 4, 8, 8)
SEEDS = (11, 12)
TOL = 1e-4

# (our A1111 name, k-diffusion function, scheduler, steps)
CASES = [
    ("Euler", "sample_euler", "karras", 6),
    ("Euler a", "sample_euler_ancestral", "automatic", 6),
    ("Heun", "sample_heun", "exponential", 5),
    ("DPM2", "sample_dpm_2", "automatic", 5),
    ("DPM2 a", "sample_dpm_2_ancestral", "automatic", 5),
    ("LMS", "sample_lms", "karras", 8),
    ("DPM fast", "sample_dpm_fast", "automatic", 7),
    ("DPM adaptive", "sample_dpm_adaptive", "automatic", 6),
    ("DPM++ 2S a", "sample_dpmpp_2s_ancestral", "automatic", 5),
    ("DPM++ SDE", "sample_dpmpp_sde", "automatic", 5),
    ("DPM++ 2M", "sample_dpmpp_2m", "automatic", 8),
    ("DPM++ 2M SDE", "sample_dpmpp_2m_sde", "automatic", 7),
    ("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", "automatic", 7),
    ("DPM++ 3M SDE", "sample_dpmpp_3m_sde", "automatic", 8),
]


@pytest.fixture(scope="module")
def kd():
    return load_sampling()


@pytest.fixture(scope="module")
def setup(tiny_world):
    from webui_api.engine.cond_types import BatchConditioning
    from webui_api.engine.denoiser import CompVisDenoiser

    model, cond, uncond = tiny_world
    return CompVisDenoiser(model), {
        "cond": BatchConditioning.plain(cond, uncond),
        "cond_scale": 5.0,
        "s_min_uncond": 0.0,
    }


def _cfg(inner):
    from webui_api.engine.denoiser import CFGDenoiser
    from webui_api.progress import CancelToken

    return CFGDenoiser(inner, CancelToken())


class StreamNoise:
    """Per-call noise from one seeded generator (two instances give identical streams)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, sigma, sigma_next):
        return torch.randn(SHAPE, generator=self.generator)


def record_max_diff(name: str, diff: float) -> None:
    """Shown with `pytest -s`. The parity is exact except LMS under NumPy 2 (~2e-5): there
    k-diffusion's LMS basis polynomial mixes Python floats with float32 sigmas, which NEP 50
    evaluates in float32; under NumPy 1.x (A1111's pin, 1.26) it is float64, as ours is."""
    print(f"{name}: max abs diff {diff:.3g}")


def _x0(sigmas):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * sigmas[0]


def _reference_kwargs(name, sigmas, inner):
    """What A1111 hands the k-diffusion function for txt2img (its sampler_extra_params, eta
    default 1.0, n / sigma_min / sigma_max for DPM fast/adaptive, solver_type for Heun 2M SDE)."""
    sampler = find_sampler(name)
    kwargs = {"s_noise": 1.0} if "s_noise" in sampler.extra_params else {}
    if "s_churn" in sampler.extra_params:
        kwargs.update(s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"))
    if sampler.takes_eta:
        kwargs["eta"] = 1.0
    if name in ("DPM fast", "DPM adaptive"):
        kwargs.update(sigma_min=inner.sigma_min, sigma_max=inner.sigma_max)
    if name == "DPM fast":
        kwargs["n"] = len(sigmas) - 1
    if name == "DPM++ 2M SDE Heun":
        kwargs["solver_type"] = "heun"
    return kwargs


def _noise_pair(name, sigmas, kd):
    """(ours, reference) noise samplers drawing the same numbers."""
    if find_sampler(name).brownian_noise:
        low, high = schedule_interval(sigmas)
        ours = BrownianTreeNoise(SHAPE[1:], low, high, SEEDS)
        return ours, kd.BrownianTreeNoiseSampler(torch.zeros(SHAPE), low, high, seed=list(SEEDS))
    return StreamNoise(3), StreamNoise(3)


@pytest.mark.parametrize(("name", "function", "scheduler", "steps"), CASES, ids=[c[0] for c in CASES])
def test_matches_kdiffusion(kd, setup, name, function, scheduler, steps):
    inner, extra = setup
    sampler = find_sampler(name)
    sigmas = compute_sigmas(sampler, find_scheduler(scheduler), steps, inner.sigmas)
    ours_noise, ref_noise = _noise_pair(name, sigmas, kd)
    kwargs = sampler_call_kwargs(sampler, sigmas, eta=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                                 s_noise=1.0, noise_sampler=ours_noise, model_sigma_min=inner.sigma_min,
                                 model_sigma_max=inner.sigma_max)
    ours_steps, ref_steps = [], []
    with torch.inference_mode():
        ours = sampler.function(_cfg(inner), _x0(sigmas), sigmas, extra_args=extra,
                                callback=lambda d: ours_steps.append(d["i"]), **kwargs)
        ref_args = _reference_kwargs(name, sigmas, inner)
        fn = getattr(kd, function)
        if "noise_sampler" in inspect.signature(fn).parameters:
            ref_args["noise_sampler"] = ref_noise
        positional = () if name in ("DPM fast", "DPM adaptive") else (sigmas,)
        ref = fn(_cfg(inner), _x0(sigmas), *positional, extra_args=extra,
                 callback=lambda d: ref_steps.append(d["i"]), disable=True, **ref_args)
    assert ours.shape == ref.shape
    record_max_diff(name, float((ours - ref).abs().max()))
    assert float((ours - ref).abs().max()) < TOL
    assert ours_steps == ref_steps and ours_steps  # same callbacks, adaptive ones included


def test_churn_noise_matches_kdiffusion(kd, setup):
    """With s_churn > 0 the churn noise is used; k-diffusion draws it from the global RNG
    (A1111 redirects that to the per-image generators), ours from the noise sampler."""
    inner, extra = setup
    sigmas = compute_sigmas(find_sampler("Euler"), find_scheduler("karras"), 6, inner.sigmas)
    churn = {"s_churn": 2.0, "s_tmin": 0.1, "s_tmax": 10.0, "s_noise": 1.003}
    with torch.inference_mode():
        for name, function in (("Euler", "sample_euler"), ("Heun", "sample_heun"), ("DPM2", "sample_dpm_2")):
            ours = find_sampler(name).function(_cfg(inner), _x0(sigmas), sigmas, extra_args=extra,
                                               noise_sampler=StreamNoise(5), **churn)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(5)
                ref = getattr(kd, function)(_cfg(inner), _x0(sigmas), sigmas, extra_args=extra, disable=True, **churn)
            assert float((ours - ref).abs().max()) < TOL, name


def test_brownian_noise_matches_kdiffusion_per_query(kd):
    sigmas = torch.tensor([14.6, 7.0, 2.5, 0.8, 0.1, 0.0292, 0.0])
    low, high = schedule_interval(sigmas)
    ours = BrownianTreeNoise(SHAPE[1:], low, high, SEEDS)
    ref = kd.BrownianTreeNoiseSampler(torch.zeros(SHAPE), low, high, seed=list(SEEDS))
    for a, b in [(14.6, 7.0), (7.0, 2.5), (2.5, 1.2), (0.8, 0.1), (0.1, 0.0292), (7.0, 14.6)]:
        assert torch.equal(ours(torch.tensor(a), torch.tensor(b)), ref(torch.tensor(a), torch.tensor(b)))

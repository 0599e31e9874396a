"""Samplers with latents on the GPU and the schedule on the CPU (how the engine calls them).

Skipped without CUDA. The results must match the all-CPU run up to float rounding.
"""

from __future__ import annotations

import pytest
import torch
from sampler_toys import GaussianDenoiser

from samplers import registry
from samplers.registry import compute_sigmas, find_scheduler, sampler_call_kwargs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class DeviceNoise:
    """Same draws on any device: generated on the CPU, then moved."""

    def __init__(self, shape, device):
        self.generator, self.shape, self.device = torch.Generator().manual_seed(0), shape, device

    def __call__(self, sigma, sigma_next):
        return torch.randn(self.shape, generator=self.generator).to(self.device)


@pytest.mark.parametrize("name", [s.name for s in registry.implemented_samplers()])
def test_cuda_latents_cpu_sigmas(sd15_sigmas, name):
    sampler = registry.find_sampler(name)
    sigmas = compute_sigmas(sampler, find_scheduler("karras"), 24, sd15_sigmas)
    shape = (2, 4, 8, 8)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * sigmas[0]

    def run(device):
        kwargs = sampler_call_kwargs(sampler, sigmas, eta=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                                     s_noise=1.0, noise_sampler=DeviceNoise(shape, device))
        return sampler.function(GaussianDenoiser(), x.to(device), sigmas, **kwargs).cpu()

    on_gpu, on_cpu = run("cuda"), run("cpu")
    assert torch.allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)


SYNC_FREE = ("Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE",
             "DPM++ 3M SDE", "LCM", "Restart", "DPM fast")


def cuda_syncs(name: str, sd15_sigmas: torch.Tensor, steps: int) -> int:
    """Synchronizing CUDA calls (torch's sync debug mode) while the sampler runs with everything on the GPU."""
    import warnings

    sampler = registry.find_sampler(name)
    sigmas = compute_sigmas(sampler, find_scheduler("karras"), steps, sd15_sigmas).cuda()
    generator = torch.Generator("cuda").manual_seed(0)
    x = torch.randn((1, 4, 8, 8), device="cuda", generator=generator) * sigmas[0]

    def noise(sigma, sigma_next):  # drawn on the GPU: no copy from the host
        return torch.randn(x.shape, device="cuda", generator=generator)

    kwargs = sampler_call_kwargs(sampler, sigmas, eta=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                                 s_noise=1.0, noise_sampler=noise, model_sigma_min=0.03, model_sigma_max=14.6)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            sampler.function(GaussianDenoiser(), x, sigmas, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(warning.message) for warning in caught)


@pytest.mark.parametrize("name", SYNC_FREE)
def test_no_cuda_sync_per_step(sd15_sigmas, name):
    """The CPU emulation in tests/gpu/test_no_host_syncs.py, checked against CUDA itself."""
    few, more = cuda_syncs(name, sd15_sigmas, 4), cuda_syncs(name, sd15_sigmas, 8)
    assert few == more, f"{name}: {few} synchronizing calls for 4 steps, {more} for 8"

"""No host syncs per sampling step: on CUDA, reading a device tensor's value on the host
(.item(), float(t), bool(t) in an `if`, .tolist(), .cpu(), .numpy()) waits for every queued
kernel, so the host can no longer run ahead of the GPU.

On a CPU every tensor is a host tensor, so "device residency" is emulated: the schedule the
engine hands the sampler is a `DeviceResident` tensor subclass, which every result computed from
it stays (torch propagates subclasses through operations). The test counts host reads of such
tensors made while a sampler function runs, for a few steps and for twice as many: any per-step
read makes the counts differ. The one documented read is the host copy of the schedule taken
before the loop (`sigma_levels`; UniPC's copy of alphas_cumprod, or of the sigmas in its flow form).
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator

import pytest
import torch

import samplers.registry as registry
from samplers import unipc
from samplers._common import ancestral_reaches_zero, ancestral_step
from samplers.unipc import UniPCOptions
from tests.engine.helpers import RecordingObserver, make_job
from webui_api.engine import pipeline
from webui_api.engine.facade import Engine
from webui_api.progress import CancelToken

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
# samplers whose loops were audited (UniPC's schedule is the model's alphas_cumprod, marked below too)
AUDITED = ("Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ 3M SDE",
           "LCM", "DPM++ SDE", "UniPC", "Restart", "DPM fast")
# the exceptions, by design (see docs/deployment.md): DPM adaptive accepts or rejects each step by an
# error norm that must be read on the host, and its loop ends when the accepted time reaches t_end
READS_PER_STEP_BY_DESIGN = ("DPM adaptive",)


class DeviceResident(torch.Tensor):
    """Marks tensors that would live on the GPU; results of operations on them stay marked."""


def sampler_code() -> set:
    return {info.function.__code__ for info in registry.SAMPLERS if info.function is not None}


def in_sampler(codes: set) -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


class HostReadCounter:
    """Counts host reads of DeviceResident tensors made inside sampler functions, by caller."""

    def __init__(self) -> None:
        self.reads: collections.Counter[str] = collections.Counter()
        self._codes = sampler_code()

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name: str, original):
        counter = self

        def read(tensor, *args, **kwargs):
            caller = sys._getframe(1)
            from_torch = f"{'/'}torch{'/'}" in caller.f_code.co_filename  # the subclass's own re-dispatch
            if type(tensor) is DeviceResident and not from_torch and in_sampler(counter._codes):
                counter.reads[f"{name} at {caller.f_code.co_filename.rsplit('/', 2)[-1]}:{caller.f_lineno}"] += 1
            return original(tensor, *args, **kwargs)

        return read


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    loaded = Engine(device="cpu")
    loaded.load()
    yield loaded


def host_reads(engine: Engine, monkeypatch: pytest.MonkeyPatch, sampler: str, steps: int) -> collections.Counter:
    real_make_sigmas = pipeline.make_sigmas
    monkeypatch.setattr(pipeline, "make_sigmas", lambda *a, **k: real_make_sigmas(*a, **k).as_subclass(DeviceResident))
    real_sampler_kwargs = pipeline.sampler_kwargs

    def device_resident_table(*args, **kwargs) -> dict:  # UniPC's schedule is the model's alphas_cumprod
        call = real_sampler_kwargs(*args, **kwargs)
        if isinstance(call.get("alphas_cumprod"), torch.Tensor):
            call["alphas_cumprod"] = call["alphas_cumprod"].as_subclass(DeviceResident)
        return call

    monkeypatch.setattr(pipeline, "sampler_kwargs", device_resident_table)
    counter = HostReadCounter()
    with monkeypatch.context() as patched:
        counter.patch(patched)
        job = make_job(steps=steps, sampler=sampler, scheduler="Karras", width=32, height=32)
        engine.txt2img(job, RecordingObserver(), CancelToken())
    return counter.reads


@pytest.mark.parametrize(
    "sampler", [name if name == "Euler a" else pytest.param(name, marks=pytest.mark.slow) for name in AUDITED]
)
def test_sampling_loop_reads_nothing_back_per_step(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                   sampler: str) -> None:
    few, more = host_reads(engine, monkeypatch, sampler, 3), host_reads(engine, monkeypatch, sampler, 6)
    assert few == more, f"per-step host reads in {sampler}: {more - few}"
    assert sum(few.values()) <= 1, f"{sampler} reads {dict(few)}"  # at most sigma_levels' one copy


def flow_unipc_reads(monkeypatch: pytest.MonkeyPatch, steps: int, options: UniPCOptions) -> collections.Counter:
    """Host reads of UniPC's flow form over device-resident sigmas into 0, on a toy flow denoiser."""
    sigmas = torch.linspace(0.9, 0.0, steps + 1).as_subclass(DeviceResident)
    x = torch.randn(1, 4, 8, 8).as_subclass(DeviceResident)

    def toy_flow_denoiser(x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x_t * (1.0 - sigma)[:, None, None, None]

    counter = HostReadCounter()
    counter._codes = {unipc.sample_unipc_rf.__code__}
    with monkeypatch.context() as patched:
        counter.patch(patched)
        unipc.sample_unipc_rf(toy_flow_denoiser, x, sigmas, options=options)
    return counter.reads


@pytest.mark.parametrize("variant", unipc.VARIANTS)
def test_flow_unipc_reads_its_sigmas_once(monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    """UniPC on Flux/SD3 plans its steps from one host copy of the sigmas, like the VP form."""
    options = UniPCOptions(variant=variant)
    few, more = flow_unipc_reads(monkeypatch, 4, options), flow_unipc_reads(monkeypatch, 8, options)
    assert few == more, f"per-step host reads in flow UniPC: {more - few}"
    assert sum(few.values()) == 1, f"flow UniPC reads {dict(few)}"  # the one host copy of the sigmas


def test_the_counter_sees_a_per_step_read(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instrument works: a sampler that branches on a device sigma each step is caught."""
    info = next(entry for entry in registry.SAMPLERS if entry.name == "Euler")
    real = info.function

    def branching_euler(model, x, sigmas, **kwargs):
        for i in range(len(sigmas) - 1):
            if sigmas[i + 1] == 0:  # the pattern the audit removed
                break
        return real(model, x, sigmas, **kwargs)

    monkeypatch.setattr(sys.modules[__name__], "sampler_code", lambda: {branching_euler.__code__})
    monkeypatch.setattr(type(info), "function", property(lambda self: branching_euler if self is info
                                                          else self.__dict__["function"]), raising=False)
    few, more = host_reads(engine, monkeypatch, "Euler", 3), host_reads(engine, monkeypatch, "Euler", 6)
    assert sum(more.values()) > sum(few.values()) > 0


@pytest.mark.parametrize(
    ("sigma_from", "sigma_to", "eta"),
    [(14.6146, 9.7, 1.0), (1.0, 0.0, 1.0), (0.5, 0.1, 0.0), (2.0, 1.0, 5.0), (14.6146, 0.00029, 1.0),
     (3.0, 2.9999, 1.0), (1e-3, 1e-6, 1.0), (7.0, 6.0, 1.7320508)],
)
def test_host_zero_check_agrees_with_the_tensor_step(sigma_from: float, sigma_to: float, eta: float) -> None:
    sigma_down, _ = ancestral_step(torch.tensor(sigma_from), torch.tensor(sigma_to), eta=eta)
    f32 = torch.tensor([sigma_from, sigma_to]).tolist()  # the float32 values sigma_levels would give
    assert ancestral_reaches_zero(f32[0], f32[1], eta) == bool(sigma_down == 0)


def test_dpm_adaptive_is_the_documented_exception(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The list of exceptions is true: DPM adaptive does read the device every step."""
    for sampler in READS_PER_STEP_BY_DESIGN:
        reads = host_reads(engine, monkeypatch, sampler, 3)
        assert sum(reads.values()) > 1, f"{sampler} no longer reads per step: move it to AUDITED"

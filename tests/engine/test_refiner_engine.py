"""The refiner switch on two tiny checkpoints (SDXL base + SDXL refiner): which UNet runs at
each step, the step A1111's threshold picks, conditioning rebuilt for the refiner, infotext,
and "no switch" being bit for bit the plain job."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint
from webui_api.engine.facade import Engine
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.refiner import SwitchPoint, closest_checkpoint, completed_ratio
from webui_api.errors import NotFound
from webui_api.jobs import RefinerParams
from webui_api.progress import CancelToken


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    sd = tmp_path_factory.mktemp("refiner") / "Stable-diffusion"
    write_checkpoint(sd / "base.safetensors", build_networks("sdxl", seed=1))
    write_checkpoint(sd / "refiner.safetensors", build_networks("sdxl-refiner", seed=2))
    return sd


@pytest.fixture(scope="module")
def engine(checkpoint_dir):
    return Engine(device="cpu", dtype="float32", paths=ModelPaths(ckpt_dirs=(checkpoint_dir,)), no_hashing=True)


class UNetCalls:
    """Which UNet ran, in call order, with the timestep it got (torch forward pre-hooks)."""

    def __init__(self, **unets) -> None:
        self.calls: list[tuple[str, float]] = []
        self.handles = [unet.register_forward_pre_hook(self._hook(name)) for name, unet in unets.items()]

    def _hook(self, name):
        def record(module, args):
            self.calls.append((name, float(torch.as_tensor(args[1]).flatten()[0])))

        return record

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def refiner_job(switch_at: float | None, steps: int = 6, sampler: str = "Euler", **options):
    job = replace(make_job(seeds=(3,), steps=steps, sampler=sampler, options=options), model_title="base")
    return job if switch_at is None else replace(job, refiner=RefinerParams("refiner", switch_at))


def run(engine, job):
    return engine.txt2img(job, RecordingObserver(), CancelToken())


def expected_switch_step(engine, job) -> int:
    """The first step whose sigma maps to a timestep t with (999 - t) / 1000 >= switch_at."""
    from webui_api.engine.denoiser import make_inner
    from webui_api.engine.pipeline import make_sigmas, resolve_plan

    base = engine.load("base")
    inner = make_inner(base, "sigmas")
    sigmas = make_sigmas(base, job, resolve_plan(job), inner)
    point = SwitchPoint(job.refiner.switch_at)
    due = [i for i, s in enumerate(sigmas[:-1]) if completed_ratio(point, i, s[None], inner.sigmas) >= point.switch_at]
    return due[0]


@pytest.mark.parametrize("switch_at", [0.3, 0.5, 0.8])
def test_switch_happens_at_the_computed_step(engine, switch_at):
    job = refiner_job(switch_at)
    base = engine.load("base")
    switch = expected_switch_step(engine, job)
    assert 0 < switch < job.sampling.steps  # the thresholds are chosen to switch mid-run
    refiner_model = engine.companion(engine.find_checkpoint("refiner"))
    calls = UNetCalls(base=base.unet, refiner=refiner_model.unet)
    try:
        result = run(engine, job)
    finally:
        calls.close()
    assert calls.names() == ["base"] * switch + ["refiner"] * (job.sampling.steps - switch)
    assert result.extra_generation_params["Refiner"] == "refiner"
    assert result.extra_generation_params["Refiner switch at"] == switch_at
    assert engine.loaded is base  # the main model stays the active one


def test_switch_at_one_never_switches_and_is_bit_for_bit_the_plain_job(engine):
    plain = run(engine, refiner_job(None))
    never = run(engine, refiner_job(1.0))
    assert np.array_equal(np.asarray(plain.images[0].image), np.asarray(never.images[0].image))
    assert "Refiner" not in never.extra_generation_params


def test_refined_image_differs_and_is_reproducible(engine):
    plain = np.asarray(run(engine, refiner_job(None)).images[0].image)
    first = np.asarray(run(engine, refiner_job(0.5)).images[0].image)
    again = np.asarray(run(engine, refiner_job(0.5)).images[0].image)
    assert not np.array_equal(plain, first) and np.array_equal(first, again)


def test_refiner_conditioning_is_rebuilt_with_its_own_encoder(engine):
    """The refiner's UNet takes 64-wide cross-attention and 5 time ids; the base's 128-wide
    states would fail in its attention layers, so a run that finishes proves the re-encode."""
    refiner_model = engine.companion(engine.find_checkpoint("refiner"))
    seen = []
    handle = refiner_model.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].shape[-1]), with_kwargs=True)
    try:
        run(engine, refiner_job(0.5))
    finally:
        handle.remove()
    assert seen and set(seen) == {64}


def test_switch_by_sampling_steps_option(engine):
    job = refiner_job(0.5, refiner_switch_by_sample_steps=True)
    base = engine.load("base")
    refiner_model = engine.companion(engine.find_checkpoint("refiner"))
    calls = UNetCalls(base=base.unet, refiner=refiner_model.unet)
    try:
        result = run(engine, job)
    finally:
        calls.close()
    assert calls.names() == ["base"] * 3 + ["refiner"] * 3  # call counter / 6 >= 0.5 from call 3 on
    assert result.extra_generation_params["Refiner switch by sampling steps"] is True


def test_second_order_sampler_switches_inside_a_step(engine):
    """Heun makes two model calls per step: the switch may fall between them (A1111 checks
    every call), and the sampler carries on with its state."""
    job = refiner_job(0.5, sampler="Heun", steps=4)
    base = engine.load("base")
    refiner_model = engine.companion(engine.find_checkpoint("refiner"))
    calls = UNetCalls(base=base.unet, refiner=refiner_model.unet)
    try:
        run(engine, job)
    finally:
        calls.close()
    names = calls.names()
    first = names.index("refiner")
    assert 0 < first and set(names[first:]) == {"refiner"} and set(names[:first]) == {"base"}


def test_refiner_equal_to_the_main_model_never_switches(engine):
    job = replace(refiner_job(None), refiner=RefinerParams("base", 0.2))
    result = run(engine, job)
    assert "Refiner" not in result.extra_generation_params


def test_unknown_refiner_is_a_404_with_a1111s_message(engine):
    with pytest.raises(NotFound, match="Could not find checkpoint with name nope"):
        run(engine, replace(refiner_job(None), refiner=RefinerParams("nope", 0.5)))


def test_closest_match_takes_the_shortest_title_containing_the_name(engine):
    assert closest_checkpoint(engine.checkpoints(), "refin").filename.endswith("refiner.safetensors")
    assert closest_checkpoint(engine.checkpoints(), "refiner [0123456789]").filename.endswith("refiner.safetensors")


def test_img2img_with_refiner(engine):
    from PIL import Image

    from webui_api.jobs import Img2ImgParams

    image = Image.new("RGB", (64, 64), (120, 40, 200))
    job = replace(refiner_job(0.5), kind="img2img",
                  img2img=Img2ImgParams(init_images=(image,), denoising_strength=0.75))
    base = engine.load("base")
    refiner_model = engine.companion(engine.find_checkpoint("refiner"))
    calls = UNetCalls(base=base.unet, refiner=refiner_model.unet)
    try:
        result = engine.img2img(job, RecordingObserver(), CancelToken())
    finally:
        calls.close()
    names = calls.names()
    assert "base" in names and "refiner" in names and names.index("refiner") > names.count("base") - 1
    assert result.extra_generation_params["Refiner"] == "refiner"
    assert result.extra_generation_params["Denoising strength"] == 0.75

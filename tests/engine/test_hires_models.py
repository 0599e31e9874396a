"""Hires fix with other models: hr_checkpoint_name, the refiner in either pass, model
upscalers, timestep samplers in the second pass, and the hires prompt-schedule frame."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job, with_sampler
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint
from tests.engine.test_refiner_engine import UNetCalls
from webui_api.engine.facade import Engine
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.jobs import HiresParams, RefinerParams
from webui_api.progress import CancelToken


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    sd = tmp_path_factory.mktemp("hires") / "Stable-diffusion"
    for seed, name in enumerate(("main", "second", "refiner"), start=1):
        write_checkpoint(sd / f"{name}.safetensors", build_networks("sd1", seed=seed))
    return Engine(device="cpu", dtype="float32", paths=ModelPaths(ckpt_dirs=(sd,)), no_hashing=True)


def hires_job(steps: int = 3, hr_steps: int = 3, sampler: str = "Euler", hr_sampler: str | None = None,
              checkpoint: str | None = None, upscaler: str = "Latent", prompts=None, **options):
    job = replace(make_job(seeds=(4,), steps=steps, sampler=sampler, options=options), model_title="main")
    latent = {"Latent": "bilinear"}.get(upscaler)
    sampling = with_sampler(job.sampling, hr_sampler or sampler, steps=hr_steps)
    params = HiresParams(
        upscale_width=96, upscale_height=96, upscaler=upscaler, latent_mode=latent, latent_antialias=False,
        steps=hr_steps, denoising_strength=0.6, sampling=sampling, prompts=tuple(prompts or job.prompts),
        negative_prompts=job.negative_prompts, checkpoint_title=checkpoint,
    )
    return replace(job, hires=params)


def unet_calls(engine, *names):
    models = {name: engine.companion(engine.find_checkpoint(name)) if name != "main" else engine.load("main")
              for name in names}
    return UNetCalls(**{name: model.unet for name, model in models.items()})


def run(engine, job, *names):
    engine.load("main")
    engine.models.set_limit(3)
    calls = unet_calls(engine, *names)
    try:
        result = engine.txt2img(job, RecordingObserver(), CancelToken())
    finally:
        calls.close()
    return result, calls.names()


def test_hires_checkpoint_runs_the_second_pass(engine):
    result, names = run(engine, hires_job(checkpoint="second"), "main", "second")
    assert names == ["main"] * 3 + ["second"] * 3
    assert result.extra_generation_params["Hires checkpoint"] == "second"
    keys = list(result.extra_generation_params)
    assert keys.index("Denoising strength") < keys.index("Hires checkpoint")
    assert result.images[0].image.size == (96, 96)
    assert engine.loaded.info.model_name == "main"


def test_same_checkpoint_by_name_is_the_plain_hires_job(engine):
    plain, _ = run(engine, hires_job())
    same, names = run(engine, hires_job(checkpoint="main"), "main")
    assert names == ["main"] * 6
    assert np.array_equal(np.asarray(plain.images[0].image), np.asarray(same.images[0].image))


def test_hires_checkpoint_with_a_pixel_upscaler(engine):
    result, names = run(engine, hires_job(checkpoint="second", upscaler="Lanczos"), "main", "second")
    assert names == ["main"] * 3 + ["second"] * 3 and result.images[0].image.size == (96, 96)


@pytest.mark.parametrize("option, expected", [
    ("second pass", ["main"] * 3 + ["main"] + ["refiner"] * 2),
    ("first pass", ["main"] + ["refiner"] * 2 + ["main"] * 3),
    ("both passes", ["main"] + ["refiner"] * 2 + ["main"] + ["refiner"] * 2),
])
def test_refiner_runs_in_the_passes_the_option_names(engine, option, expected):
    """Switch by sampling steps at 0.3: call 1 of 3 in each pass where the refiner may run;
    the second pass starts on the main model again (A1111 reloads it)."""
    job = replace(hires_job(hires_fix_refiner_pass=option, refiner_switch_by_sample_steps=True),
                  refiner=RefinerParams("refiner", 0.3))
    result, names = run(engine, job, "main", "refiner")
    assert names == expected
    extras = result.extra_generation_params
    assert extras["Refiner"] == "refiner"
    assert extras.get("Hires refiner") == (None if option == "second pass" else option)


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC", "DDIM CFG++"])
def test_timestep_samplers_in_the_second_pass(engine, sampler):
    job = hires_job(steps=4, hr_steps=4, hr_sampler=sampler, uni_pc_order=2)
    result, names = run(engine, job, "main")
    assert result.images[0].image.size == (96, 96)
    assert names[:4] == ["main"] * 4 and len(names) > 4


def test_hires_prompt_schedules_use_the_hires_frame(tiny_model):
    """A1111: base = first-pass total steps, frame = hires total steps; "[b:c:6]" with 4 + 4
    steps switches 2 steps into the hires pass, "[b:c:1.5]" half-way through it."""
    from webui_api.engine.hires import hires_conditioning
    from webui_api.engine.pipeline import BatchSpec, resolve_plan

    job = hires_job(steps=4, hr_steps=4, prompts=("a [b:c:6] [d:e:1.5]",))
    plan = resolve_plan(job)
    second = replace(job, prompts=job.hires.prompts)
    with torch.inference_mode():
        conditioning = hires_conditioning(job, plan, plan)(tiny_model, BatchSpec.of(second, 0))
    scheduled = conditioning.cond[0].parts[0][0]
    assert [end for end, _ in scheduled.variants] == [2, 4]


def test_hires_prompts_lose_their_lora_tags(tiny_model):
    """The second pass encodes the hires prompt without <lora:...> tags, as the first does."""
    from webui_api.engine.hires import hires_conditioning
    from webui_api.engine.pipeline import BatchSpec, resolve_plan

    tagged = hires_job(prompts=("a cat <lora:style:0.8>",))
    clean = hires_job(prompts=("a cat ",))
    plan = resolve_plan(tagged)
    with torch.inference_mode():
        built = [
            hires_conditioning(job, plan, plan)(tiny_model, BatchSpec.of(replace(job, prompts=job.hires.prompts), 0))
            for job in (tagged, clean)
        ]
    first, second = (b.cond[0].parts[0][0].variants[0][1].crossattn for b in built)
    assert torch.equal(first, second)

"""SD3 / SD3.5 through the real loaders and the engine: packed and separate text encoders, T5
optional, missing parts refused, txt2img / img2img end to end with tiny random configs, the
conditioning and one sampler step against diffusers' own StableDiffusion3Pipeline, and the
flow-matching sigma table (shift 3.0) as ComfyUI/Forge build it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.helpers import RecordingObserver, make_job
from tests.flux.files import cpu_engine
from tests.sd3.files import TINY_35_MEDIUM, tiny_parts, write_models
from webui_api.engine.families import sd3 as sd3_family
from webui_api.engine.families.flow import ScheduledConds
from webui_api.engine.loading.files import UnusableModelFile
from webui_api.errors import BadRequest
from webui_api.jobs import Img2ImgParams
from webui_api.progress import CancelToken

ALL = ("clip_l", "clip_g", "t5xxl")


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


def _job(**kw):
    settings = {"width": 32, "height": 32, "steps": 3, "cfg_scale": 4.0, "model_title": "sd3.safetensors", **kw}
    title = settings.pop("model_title")
    return replace(make_job(**settings), model_title=title)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


@pytest.mark.parametrize("packed", [ALL, ("clip_l", "clip_g"), ()], ids=["all-packed", "no-t5", "separate"])
def test_single_file_loads_with_packed_or_separate_encoders(tmp_path, parts, packed):
    paths = write_models(tmp_path, parts, packed)
    engine = cpu_engine(paths)
    model = engine.load("sd3.safetensors")
    assert model.family == "sd3" and model.architecture == "sd3" and model.flow_shift == 3.0
    assert model.latent_channels == 16 and model.vae_scale_factor == pytest.approx(1.5305)
    assert torch.equal(model.unet.state_dict()["pos_embed.proj.weight"], parts["transformer"]["x_embedder.proj.weight"])
    g = model.text_encoder_2.state_dict()
    assert torch.equal(g["text_projection.weight"], parts["clip_g"]["text_projection.weight"])
    if packed == ("clip_l", "clip_g"):  # T5 in models/text_encoder is found, as Forge's module scan would
        assert model.text_encoder_3 is not None
    expected = tuple(sorted(str(paths[k]) for k in ALL if k not in packed))
    assert model.module_files == expected


def test_t5_is_optional(tmp_path, parts):
    paths = write_models(tmp_path, parts, ("clip_l", "clip_g"))
    Path(paths["t5xxl"]).unlink()
    engine = cpu_engine(paths)
    model = engine.load("sd3.safetensors")
    assert model.text_encoder_3 is None and model.tokenizer_3 is None
    cond = sd3_family.encode_prompts(model, ["a red cat"], _job())
    assert cond.context.shape == (1, 77 + 256, 64)
    assert torch.count_nonzero(cond.context[:, 77:]) == 0  # T5's half is zeros
    result = engine.txt2img(_job(), RecordingObserver(), CancelToken())
    assert result.images[0].image.size == (32, 32)


def test_missing_clip_is_named(tmp_path, parts):
    paths = write_models(tmp_path, parts, ("clip_l", "t5xxl"))
    Path(paths["clip_g"]).unlink()
    with pytest.raises(UnusableModelFile, match="this SD3 checkpoint lacks the CLIP-G text encoder;") as err:
        cpu_engine(paths).load("sd3.safetensors")
    assert "forge_additional_modules" in str(err.value)


def test_txt2img_is_deterministic_follows_seed_and_cfg(tmp_path, parts):
    engine = cpu_engine(write_models(tmp_path, parts, ()))
    job = _job(seeds=(5,), negative_prompts=("blurry",))
    observer = RecordingObserver()
    first = engine.txt2img(job, observer, CancelToken())
    assert first.images[0].image.size == (32, 32) and observer.steps_of_batch(0) == [0, 1, 2]
    assert np.array_equal(_pixels(first), _pixels(engine.txt2img(job, RecordingObserver(), CancelToken())))
    other_seed = replace(job, seeds=replace(job.seeds, seeds=(6,)))
    assert not np.array_equal(_pixels(first), _pixels(engine.txt2img(other_seed, RecordingObserver(), CancelToken())))
    cfg_1 = replace(job, sampling=replace(job.sampling, cfg_scale=1.0))
    assert not np.array_equal(_pixels(first), _pixels(engine.txt2img(cfg_1, RecordingObserver(), CancelToken())))
    modules = [first.extra_generation_params[f"Module {i}"] for i in (1, 2, 3)]
    assert modules == ["clip_g", "clip_l", "t5xxl"]


@pytest.mark.parametrize("scheduler", ["Simple", "Normal", "Beta"])
def test_schedulers_run(tmp_path, parts, scheduler):
    engine = cpu_engine(write_models(tmp_path, parts))
    job = _job()
    from samplers.registry import find_scheduler

    job = replace(job, sampling=replace(job.sampling, schedule=find_scheduler(scheduler)))
    assert engine.txt2img(job, RecordingObserver(), CancelToken()).images[0].image.size == (32, 32)


def test_img2img_end_to_end(tmp_path, parts):
    engine = cpu_engine(write_models(tmp_path, parts))
    init = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    job = replace(_job(), kind="img2img", img2img=Img2ImgParams(init_images=(init,), denoising_strength=0.5))
    result = engine.img2img(job, RecordingObserver(), CancelToken())
    assert result.images[0].image.size == (32, 32)
    assert result.extra_generation_params["Denoising strength"] == 0.5


def test_sd35_medium_dual_attention_generates(tmp_path):
    engine = cpu_engine(write_models(tmp_path, tiny_parts(TINY_35_MEDIUM)))
    model = engine.load("sd3.safetensors")
    assert model.architecture == "sd3.5-medium" and model.unet.config.dual_attention_layers == (0,)
    assert engine.txt2img(_job(), RecordingObserver(), CancelToken()).images[0].image.size == (32, 32)


def test_unsupported_schedule_and_size_are_400s(tmp_path, parts):
    from samplers.registry import scheduler_of

    engine = cpu_engine(write_models(tmp_path, parts))
    base = _job()
    with pytest.raises(BadRequest, match="cannot run"):
        engine.txt2img(replace(base, sampling=replace(base.sampling, schedule=scheduler_of("uniform"))),
                       RecordingObserver(), CancelToken())
    with pytest.raises(BadRequest, match="multiples of 16"):
        engine.txt2img(replace(base, width=40), RecordingObserver(), CancelToken())
    with pytest.raises(BadRequest, match="at most 256x256"):
        engine.txt2img(replace(base, width=512), RecordingObserver(), CancelToken())


def _plan(scheduler: str):
    from samplers.registry import find_sampler, find_scheduler
    from webui_api.engine.pipeline import SamplerPlan

    return SamplerPlan(find_sampler("Euler"), find_scheduler(scheduler))


def test_sigma_table_and_schedules_follow_comfy_and_forge():
    table = sd3_family.sd3_sigma_table(3.0)
    assert table.shape == (1000,) and float(table[-1]) == pytest.approx(1.0)
    t = 0.25  # entry 249 is t = 250/1000
    assert float(table[249]) == pytest.approx(3.0 * t / (1 + 2.0 * t))
    simple = sd3_family.sd3_sigmas(_job(steps=4), _plan("simple"), 3.0)
    assert torch.equal(simple, torch.tensor([float(table[-1 - 250 * i]) for i in range(4)] + [0.0]))
    normal = sd3_family.sd3_sigmas(_job(steps=4), _plan("normal"), 3.0)
    ts = torch.linspace(1.0, float(table[0]), 4, dtype=torch.float64)
    assert torch.allclose(normal[:-1].double(), 3.0 * ts / (1 + 2.0 * ts), atol=1e-6) and normal[-1] == 0


def _diffusers_pipeline(model):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=model.unet, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=model.vae,
        text_encoder=model.text_encoder, tokenizer=model.tokenizer, text_encoder_2=model.text_encoder_2,
        tokenizer_2=model.tokenizer_2, text_encoder_3=model.text_encoder_3, tokenizer_3=model.tokenizer_3,
    )


def test_conditioning_and_euler_step_match_diffusers(tmp_path, parts):
    """A plain prompt gives diffusers' encode_prompt context and pooled vector; our denoiser +
    Euler on [s0, s1] equals x + (s1 - s0) * v with v from diffusers' transformer call at t = 1000 s0."""
    engine = cpu_engine(write_models(tmp_path, parts))
    model = engine.load("sd3.safetensors")
    pipe = _diffusers_pipeline(model)
    with torch.inference_mode():
        ours = sd3_family.encode_prompts(model, ["a red cat"], _job())
        context, _, pooled, _ = pipe.encode_prompt(
            "a red cat", "a red cat", "a red cat", do_classifier_free_guidance=False, max_sequence_length=256
        )
    assert torch.allclose(ours.context, context, atol=1e-5) and torch.allclose(ours.pooled, pooled, atol=1e-5)
    denoiser = sd3_family.SD3Denoiser(model, ScheduledConds.fixed(ours, 1), None, 1.0, CancelToken())
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([1.0, 0.6, 0.0])
    with torch.inference_mode():
        v = model.unet(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                       timestep=torch.tensor([1000.0]), return_dict=False)[0]
        step = _plan("simple").sampler.function(denoiser, x, sigmas[:2], extra_args={}, disable=True,
                                                noise_sampler=lambda a, b: torch.zeros_like(x))
    assert torch.allclose(step, x + (sigmas[1] - sigmas[0]) * v, atol=1e-5)


@pytest.mark.parametrize("with_t5", [True, False], ids=["with-t5", "no-t5"])
def test_diffusers_folder_gives_the_single_files_image(tmp_path, parts, with_t5):
    """A StableDiffusion3Pipeline folder saved by diffusers from the same weights loads and
    generates the same image as the single file (without T5: the folder diffusers writes with
    text_encoder_3 left out)."""
    packed = ALL if with_t5 else ("clip_l", "clip_g")
    paths = write_models(tmp_path, parts, packed)
    if not with_t5:
        Path(paths["t5xxl"]).unlink()
    engine = cpu_engine(paths)
    model = engine.load("sd3.safetensors")
    _diffusers_pipeline(model).save_pretrained(str(Path(paths["ckpt_dir"]) / "sd3-folder"))
    job = _job(negative_prompts=("blurry",))
    expected = _pixels(engine.txt2img(job, RecordingObserver(), CancelToken()))
    fresh = cpu_engine(paths)
    folder_model = fresh.load("sd3-folder")
    assert folder_model.family == "sd3" and (folder_model.text_encoder_3 is not None) == with_t5
    got = _pixels(fresh.txt2img(replace(job, model_title="sd3-folder"), RecordingObserver(), CancelToken()))
    assert np.array_equal(got, expected)

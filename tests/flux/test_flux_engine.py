"""Flux.1 through the real loaders and the engine: both single-file layouts, module files
found or named per job, missing parts refused, txt2img / img2img end to end with tiny
random configs, and the flow sampler against diffusers' own Flux pipeline step."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.helpers import RecordingObserver, engine_options, make_job, with_options
from tests.flux.files import TINY, cpu_engine, tiny_parts, write_gguf, write_models
from webui_api.engine.families import flux as flux_family
from webui_api.engine.families.flow import ScheduledConds
from webui_api.engine.loading.files import UnusableModelFile
from webui_api.errors import BadRequest
from webui_api.jobs import Img2ImgParams
from webui_api.progress import CancelToken


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


def _flux_job(**kw):
    settings = {"width": 32, "height": 32, "steps": 3, "cfg_scale": 1.0, **kw}
    return make_job(**settings)


@pytest.mark.parametrize("layout", ["bfl", "all-in-one"])
def test_both_layouts_load_with_every_part_bit_exact(tmp_path, parts, layout):
    paths = write_models(tmp_path, parts, layout)
    engine = cpu_engine(paths)
    model = engine.load(Path(paths["checkpoint"]).name)
    assert model.family == "flux" and model.architecture == "flux-dev" and model.latent_channels == 16
    assert model.unet.config.num_layers == TINY.double and model.unet.config.num_single_layers == TINY.single
    t5 = model.text_encoder_2.state_dict()
    assert torch.equal(t5["shared.weight"], parts["t5xxl"]["shared.weight"])
    clip = model.text_encoder.state_dict()
    key = "encoder.layers.1.mlp.fc1.weight"
    ours = clip.get(key, clip.get("text_model." + key))  # transformers' module names vary by version
    assert torch.equal(ours, parts["clip_l"]["text_model." + key])
    assert torch.equal(model.unet.state_dict()["x_embedder.weight"], parts["transformer"]["img_in.weight"])
    module_parts = () if layout == "all-in-one" else ("vae", "clip_l", "t5xxl")
    expected_modules = tuple(sorted(str(paths[p]) for p in module_parts))
    assert model.module_files == expected_modules


def test_missing_parts_are_named(tmp_path, parts):
    paths = write_models(tmp_path, parts, "bfl")
    Path(paths["t5xxl"]).unlink()
    engine = cpu_engine(paths)
    with pytest.raises(UnusableModelFile, match="this Flux checkpoint lacks the T5-XXL text encoder;") as err:
        engine.load(Path(paths["checkpoint"]).name)
    assert "forge_additional_modules" in str(err.value)


def test_unknown_module_name_is_a_400(tmp_path, parts):
    paths = write_models(tmp_path, parts, "bfl")
    engine = cpu_engine(paths)
    with pytest.raises(BadRequest, match="unknown module"):
        engine.job_modules(engine_options({"forge_additional_modules": ["/etc/passwd"]}))
    chosen = engine.job_modules(engine_options({"forge_additional_modules": [str(paths["t5xxl"]), "ae.safetensors"]}))
    assert chosen == (Path(paths["t5xxl"]), Path(paths["vae"]))


def test_txt2img_end_to_end_is_deterministic_and_follows_the_seed(tmp_path, parts):
    engine = cpu_engine(write_models(tmp_path, parts, "bfl"))
    job = _flux_job(seeds=(5,), options={"sd_model_checkpoint": "flux-bfl.safetensors"})
    job = replace(job, model_title="flux-bfl.safetensors")
    observer = RecordingObserver()
    first = engine.txt2img(job, observer, CancelToken())
    again = engine.txt2img(job, RecordingObserver(), CancelToken())
    other = engine.txt2img(replace(job, seeds=replace(job.seeds, seeds=(6,))), RecordingObserver(), CancelToken())
    pixels = [np.asarray(r.images[0].image) for r in (first, again, other)]
    assert first.images[0].image.size == (32, 32)
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])
    assert observer.steps_of_batch(0) == [0, 1, 2]
    assert first.extra_generation_params["Distilled CFG Scale"] == 3.5
    assert [first.extra_generation_params[f"Module {i}"] for i in (1, 2, 3)] == ["ae", "clip_l", "t5xxl"]


def test_distilled_cfg_and_real_cfg_change_the_image(tmp_path, parts):
    engine = cpu_engine(write_models(tmp_path, parts, "all-in-one"))
    base = replace(_flux_job(negative_prompts=("blurry",)), model_title="flux-aio.safetensors")

    def run(**sampling):
        job = replace(base, sampling=replace(base.sampling, **sampling))
        return np.asarray(engine.txt2img(job, RecordingObserver(), CancelToken()).images[0].image)

    plain = run()
    assert not np.array_equal(plain, run(distilled_cfg_scale=8.0))
    assert not np.array_equal(plain, run(cfg_scale=3.0))


def test_img2img_end_to_end(tmp_path, parts):
    engine = cpu_engine(write_models(tmp_path, parts, "all-in-one"))
    init = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    job = replace(_flux_job(), kind="img2img", model_title="flux-aio.safetensors",
                  img2img=Img2ImgParams(init_images=(init,), denoising_strength=0.5))
    result = engine.img2img(job, RecordingObserver(), CancelToken())
    assert result.images[0].image.size == (32, 32)
    assert result.extra_generation_params["Denoising strength"] == 0.5


def test_unsupported_schedule_and_size_are_400s(tmp_path, parts):
    from samplers.registry import scheduler_of

    engine = cpu_engine(write_models(tmp_path, parts, "all-in-one"))
    base = replace(_flux_job(), model_title="flux-aio.safetensors")
    with pytest.raises(BadRequest, match="schedule type 'Uniform' cannot run Flux"):
        engine.txt2img(replace(base, sampling=replace(base.sampling, schedule=scheduler_of("uniform"))),
                       RecordingObserver(), CancelToken())
    with pytest.raises(BadRequest, match="multiples of 16"):
        engine.txt2img(replace(base, width=40), RecordingObserver(), CancelToken())


def test_flow_table_and_schedules_follow_forge():
    table = flux_family.flow_sigma_table(1.15)
    assert table.shape == (10000,) and float(table[-1]) == pytest.approx(1.0)
    t = 0.5
    assert float(flux_family.flow_sigma_table(1.15)[4999]) == pytest.approx(np.exp(1.15) / (np.exp(1.15) + 1 / t - 1))
    simple = flux_family.flow_sigmas(_flux_job(steps=4), _plan("simple"), 1.15)
    assert simple.tolist()[0] == pytest.approx(1.0) and simple[-1] == 0 and len(simple) == 5
    assert torch.equal(simple, torch.tensor([float(table[-1 - int(i * 2500)]) for i in range(4)] + [0.0]))
    normal = flux_family.flow_sigmas(_flux_job(steps=4), _plan("normal"), 1.15)
    ts = torch.linspace(1.0, float(table[0]), 4, dtype=torch.float64)
    assert torch.allclose(normal[:-1].double(), np.exp(1.15) / (np.exp(1.15) + (1 / ts - 1)), atol=1e-6)


def _plan(scheduler: str):
    from samplers.registry import find_sampler, find_scheduler
    from webui_api.engine.pipeline import SamplerPlan

    return SamplerPlan(find_sampler("Euler"), find_scheduler(scheduler))


def test_one_euler_step_matches_diffusers_flow_update(tmp_path, parts):
    """Our denoiser + Euler on sigmas [s0, s1] equals x + (s1 - s0) * v with diffusers' own
    transformer call (the FlowMatchEuler update)."""
    engine = cpu_engine(write_models(tmp_path, parts, "all-in-one"))
    model = engine.load("flux-aio.safetensors")
    job = _flux_job()
    cond = flux_family.encode_prompts(model, ["a red cat"], job)
    denoiser = flux_family.FluxDenoiser(model, ScheduledConds.fixed(cond, 1), None, 1.0, 3.5, CancelToken())
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([1.0, 0.6, 0.0])
    with torch.inference_mode():
        v = denoiser.velocity(x, sigmas[:1], cond)
        ours = _plan("simple").sampler.function(denoiser, x, sigmas[:2], extra_args={}, disable=True,
                                                noise_sampler=lambda a, b: torch.zeros_like(x))
    assert torch.allclose(ours, x + (sigmas[1] - sigmas[0]) * v, atol=1e-5)


def test_fp8_transformer_file_is_upcast_at_load(tmp_path, parts):
    fp8 = {**parts, "transformer": {k: v.to(torch.float8_e4m3fn) for k, v in parts["transformer"].items()}}
    engine = cpu_engine(write_models(tmp_path, fp8, "all-in-one"))
    model = engine.load("flux-aio.safetensors")
    weight = model.unet.state_dict()["x_embedder.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, fp8["transformer"]["img_in.weight"].to(torch.float32))
    job = replace(_flux_job(), model_title="flux-aio.safetensors")
    result = engine.txt2img(job, RecordingObserver(), CancelToken())
    assert result.images[0].image.size == (32, 32)


def test_schnell_has_no_guidance_input(tmp_path):
    schnell = tiny_parts(replace(TINY, guidance=False))
    engine = cpu_engine(write_models(tmp_path, schnell, "all-in-one"))
    base = replace(_flux_job(), model_title="flux-aio.safetensors")
    model = engine.load("flux-aio.safetensors")
    assert model.architecture == "flux-schnell" and model.flow_shift == 1.0

    def run(**sampling):
        job = replace(base, sampling=replace(base.sampling, **sampling))
        return engine.txt2img(job, RecordingObserver(), CancelToken())

    first, second = run(), run(distilled_cfg_scale=9.0)
    assert np.array_equal(np.asarray(first.images[0].image), np.asarray(second.images[0].image))
    assert "Distilled CFG Scale" not in first.extra_generation_params


def test_gguf_quantized_transformer_loads_and_generates(tmp_path, parts):
    from gguf import GGMLQuantizationType, quants

    paths = write_models(tmp_path, parts, "bfl")
    gguf_path = Path(paths["checkpoint"]).with_suffix(".gguf")
    write_gguf(gguf_path, parts["transformer"])
    Path(paths["checkpoint"]).unlink()
    engine = cpu_engine(paths)
    model = engine.load("flux-bfl.gguf")
    weight = model.unet.get_submodule("transformer_blocks.0.ff.net.0.proj").dequantized_weight()
    source = parts["transformer"]["double_blocks.0.img_mlp.0.weight"].numpy()
    expected = quants.dequantize(quants.quantize(source, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
    assert torch.equal(weight, torch.from_numpy(expected))
    assert torch.allclose(weight, torch.from_numpy(source), atol=2e-3)  # Q8_0 is close to the source
    job = replace(_flux_job(), model_title="flux-bfl.gguf")
    assert engine.txt2img(job, RecordingObserver(), CancelToken()).images[0].image.size == (32, 32)


def test_float8_storage_upcasts_per_layer(tmp_path, parts):
    """forge_unet_storage_dtype float8-e4m3fn: Linear weights stored in float8, computed in the
    run dtype; the image equals the one from a file whose matrices were rounded to float8."""
    rounded = {k: (v.to(torch.float8_e4m3fn).float() if v.ndim == 2 else v) for k, v in parts["transformer"].items()}
    engine = cpu_engine(write_models(tmp_path / "a", parts, "all-in-one"))
    reference = cpu_engine(write_models(tmp_path / "b", {**parts, "transformer": rounded}, "all-in-one"))
    base = replace(_flux_job(), model_title="flux-aio.safetensors")
    fp8_job = with_options(base, {"forge_unet_storage_dtype": "float8-e4m3fn"})
    stored = engine.txt2img(fp8_job, RecordingObserver(), CancelToken())
    assert engine.loaded.unet.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    expected = reference.txt2img(base, RecordingObserver(), CancelToken())
    assert np.array_equal(np.asarray(stored.images[0].image), np.asarray(expected.images[0].image))
    engine.txt2img(base, RecordingObserver(), CancelToken())  # back to Automatic: loaded again, full precision
    assert engine.loaded.unet.transformer_blocks[0].attn.to_q.weight.dtype == torch.float32


def test_parked_text_encoders_come_back_for_the_next_job(tmp_path, parts):
    from tests.gpu.test_text_encoder_parking import RecordingMover
    from webui_api.engine.text_encoder_offload import TextEncoderParking

    engine = cpu_engine(write_models(tmp_path, parts, "all-in-one"))
    job = replace(_flux_job(seeds=(3,)), model_title="flux-aio.safetensors")
    model = engine.load("flux-aio.safetensors")
    model.text_encoder_parking = TextEncoderParking("cpu", "never")
    kept = np.asarray(engine.txt2img(job, RecordingObserver(), CancelToken()).images[0].image)

    mover = RecordingMover()  # parks on "meta": an encode without bringing them back would fail
    model.text_encoder_parking = TextEncoderParking("cuda", "always", mover, parking=torch.device("meta"))
    images = [np.asarray(engine.txt2img(job, RecordingObserver(), CancelToken()).images[0].image) for _ in range(2)]
    assert {p.device.type for m in (model.text_encoder, model.text_encoder_2) for p in m.parameters()} == {"meta"}
    assert [device for _, device in mover.calls] == ["meta", "meta", "cpu", "cpu", "meta", "meta"]
    assert all(np.array_equal(kept, image) for image in images)

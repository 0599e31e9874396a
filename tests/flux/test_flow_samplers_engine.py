"""The ancestral and SDE samplers, DDIM, PLMS, UniPC, LCM, Restart and DPM fast / adaptive, on
tiny Flux and SD3 models, end to end, with no T5 tokenizer in the models folder (the bundled one
is used): finite latents, the same image for the same seed, another for another seed; DDIM CFG++
against DDIM."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.helpers import RecordingObserver, make_job, with_sampler
from tests.flux import files as flux_files
from tests.sd3 import files as sd3_files
from webui_api.engine.families import flow
from webui_api.engine.families.flux import FLUX
from webui_api.engine.families.sd3 import SD3
from webui_api.engine.loading.forge_modules import T5_TOKENIZER_FOLDER
from webui_api.engine.pipeline import BatchSpec
from webui_api.errors import BadRequest
from webui_api.jobs import Img2ImgParams
from webui_api.progress import CancelToken

NOISY = ("Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE")
FLOW_TIMESTEP = ("DDIM", "PLMS", "UniPC", "LCM", "Restart")  # flow forms of samplers A1111 runs off k-diffusion's
CHECKPOINT = {"flux": "flux-aio.safetensors", "sd3": "sd3.safetensors"}


def _write(family: str, root: Path) -> dict:
    if family == "flux":
        return flux_files.write_models(root, flux_files.tiny_parts(), "all-in-one")
    return sd3_files.write_models(root, sd3_files.tiny_parts())


@pytest.fixture(scope="module", params=["flux", "sd3"])
def setup(request, tmp_path_factory):
    """(family name, engine, loaded model) with the models folder's T5 tokenizer removed."""
    paths = _write(request.param, tmp_path_factory.mktemp(request.param))
    shutil.rmtree(Path(paths["te_dir"]) / T5_TOKENIZER_FOLDER)
    engine = flux_files.cpu_engine(paths)
    model = engine.load(CHECKPOINT[request.param])
    return request.param, engine, model


def _job(family: str, sampler: str, seed: int = 5):
    job = make_job(width=32, height=32, steps=4, cfg_scale=1.0 if family == "flux" else 3.0, seeds=(seed,),
                   negative_prompts=("blurry",))
    job = replace(job, model_title=CHECKPOINT[family])
    return replace(job, sampling=with_sampler(job.sampling, sampler))


def _latents(family: str, model, job) -> torch.Tensor:
    flow_family = FLUX if family == "flux" else SD3
    plan = flow_family.check_job(model, job)
    with torch.inference_mode():
        return flow.first_pass(flow_family, model, job, plan, BatchSpec.of(job, 0), RecordingObserver(), CancelToken())


def test_the_bundled_t5_tokenizer_is_used(setup):
    family, _, model = setup
    tokenizer = model.tokenizer_2 if family == "flux" else model.tokenizer_3
    assert len(tokenizer) == 32100 and tokenizer("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]


@pytest.mark.parametrize("sampler", NOISY + FLOW_TIMESTEP)
def test_noisy_sampler_runs_and_is_deterministic_per_seed(setup, sampler):
    family, engine, model = setup
    first = _latents(family, model, _job(family, sampler))
    assert torch.isfinite(first).all() and first.abs().max() > 0
    assert torch.equal(first, _latents(family, model, _job(family, sampler)))
    assert not torch.equal(first, _latents(family, model, _job(family, sampler, seed=6)))
    observer = RecordingObserver()
    result = engine.txt2img(_job(family, sampler), observer, CancelToken())
    assert result.images[0].image.size == (32, 32) and observer.steps_of_batch(0) == [0, 1, 2, 3]
    assert np.asarray(result.images[0].image).std() > 0


def test_eta_zero_euler_a_is_euler(setup):
    family, _, model = setup
    job = _job(family, "Euler a")
    deterministic = replace(job, sampling=replace(job.sampling, eta=0.0))
    euler = _job(family, "Euler")
    assert torch.allclose(_latents(family, model, deterministic), _latents(family, model, euler), atol=1e-5)
    assert not torch.allclose(_latents(family, model, job), _latents(family, model, euler), atol=1e-3)


@pytest.mark.parametrize("sampler", ["DPM fast", pytest.param("DPM adaptive", marks=pytest.mark.slow)])
def test_dpm_solvers_run_to_the_models_smallest_sigma_deterministically_per_seed(setup, sampler):
    """DPM adaptive takes as many steps as its error control asks of the random-weight model
    (about 6 s on Flux and 24 s on SD3 on the shared 2-core machine, hence slow)."""
    family, engine, model = setup
    first = _latents(family, model, _job(family, sampler))
    assert torch.isfinite(first).all() and first.abs().max() > 0
    assert torch.equal(first, _latents(family, model, _job(family, sampler)))
    assert not torch.equal(first, _latents(family, model, _job(family, sampler, seed=6)))
    observer = RecordingObserver()
    result = engine.txt2img(_job(family, sampler), observer, CancelToken())
    assert np.asarray(result.images[0].image).std() > 0 and observer.steps_of_batch(0)[0] == 0


@pytest.mark.parametrize("sampler", ["DDIM", "UniPC", "LCM", "DPM fast", "Restart", "DDIM CFG++", "PLMS"])
def test_img2img_walks_the_schedules_tail_with_the_flow_forms(setup, sampler):
    """8 steps at strength 0.5 walk a 4-sigma tail from the init latents; UniPC with the tail
    shorter than its order is a 400 naming the option."""
    family, engine, _ = setup
    init = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    job = _job(family, sampler)
    job = replace(job, kind="img2img", sampling=replace(job.sampling, steps=8),
                  img2img=Img2ImgParams(init_images=(init,), denoising_strength=0.5))
    first = engine.img2img(job, RecordingObserver(), CancelToken()).images[0].image
    again = engine.img2img(job, RecordingObserver(), CancelToken()).images[0].image
    assert first.size == (32, 32) and np.array_equal(np.asarray(first), np.asarray(again))
    if sampler == "UniPC":
        weak = replace(job, img2img=replace(job.img2img, denoising_strength=0.2))
        with pytest.raises(BadRequest, match="UniPC order must be < sampling steps"):
            engine.img2img(weak, RecordingObserver(), CancelToken())


def test_ddim_at_eta_zero_is_euler_and_noisy_ddim_is_not(setup):
    family, _, model = setup
    euler = _latents(family, model, _job(family, "Euler"))
    assert torch.allclose(_latents(family, model, _job(family, "DDIM")), euler, atol=1e-5)
    job = _job(family, "DDIM")
    noisy = replace(job, sampling=replace(job.sampling, eta=1.0))
    assert not torch.allclose(_latents(family, model, noisy), euler, atol=1e-3)


def test_unipc_with_fewer_steps_than_its_order_is_a_400(setup):
    family, engine, model = setup
    job = _job(family, "UniPC")
    short = replace(job, sampling=replace(job.sampling, steps=2))
    with pytest.raises(BadRequest, match="UniPC order must be < sampling steps"):
        engine.txt2img(short, RecordingObserver(), CancelToken())
    low_order = replace(short, engine_options=replace(short.engine_options, uni_pc_order=2))
    assert torch.isfinite(_latents(family, model, low_order)).all()


def test_restart_with_its_restart_segment_runs_deterministically(setup):
    """From 20 steps Restart rebuilds the schedule and walks a restart segment with fresh noise."""
    family, _, model = setup
    job = _job(family, "Restart")
    job = replace(job, sampling=replace(job.sampling, steps=20))
    first = _latents(family, model, job)
    assert torch.isfinite(first).all() and torch.equal(first, _latents(family, model, job))


def test_ddim_cfgpp_steps_along_the_uncond_estimate_at_a_twelfth_of_the_guidance(setup):
    """SD3 (cfg 3) runs real CFG, so CFG++ differs from DDIM; Flux at cfg 1 runs none, so CFG++
    is DDIM there. With cfg 12.5 CFG++ guides at scale 1: the conditional estimate alone."""
    family, _, model = setup
    cfgpp, ddim = _latents(family, model, _job(family, "DDIM CFG++")), _latents(family, model, _job(family, "DDIM"))
    assert torch.isfinite(cfgpp).all() and torch.equal(cfgpp, _latents(family, model, _job(family, "DDIM CFG++")))
    if family == "flux":
        assert torch.allclose(cfgpp, ddim, atol=1e-5)
    else:
        assert not torch.allclose(cfgpp, ddim, atol=1e-3)


def test_the_penultimate_sigma_is_discarded_as_a1111_and_forge_do(setup):
    family, _, model = setup
    flow_family = FLUX if family == "flux" else SD3
    for sampler, discards in (("DPM2 a", True), ("DPM++ 3M SDE", True), ("DPM2", True), ("Euler a", False)):
        job = _job(family, sampler)
        plan = flow_family.check_job(model, job)
        sigmas = flow.flow_schedule(flow_family, model, job, plan)
        longer = flow_family.sigmas(model, replace(job, sampling=replace(job.sampling, steps=5)), plan)
        expected = torch.cat([longer[:-2], longer[-1:]]) if discards else flow_family.sigmas(model, job, plan)
        assert len(sigmas) == 5 and torch.equal(sigmas, expected), sampler
    job = _job(family, "Euler")
    job = replace(job, engine_options=replace(job.engine_options, always_discard_next_to_last_sigma=True))
    plan = flow_family.check_job(model, job)
    longer = flow_family.sigmas(model, replace(job, sampling=replace(job.sampling, steps=5)), plan)
    assert torch.equal(flow.flow_schedule(flow_family, model, job, plan), torch.cat([longer[:-2], longer[-1:]]))

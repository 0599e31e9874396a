"""img2img with the timestep samplers (DDIM, PLMS, UniPC, DDIM CFG++) as A1111's
sample_img2img runs them: the sampler walks timesteps[:t_enc] from the init latent noised
with ᾱ at timesteps[t_enc]."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, with_options
from tests.engine.helpers import with_sampler as sampling_with
from tests.engine.test_img2img_prep import img2img_job, run_img2img_job
from webui_api.engine.img2img import Img2ImgSteps, InpaintState, img2img_steps, timestep_start
from webui_api.errors import BadRequest
from webui_api.jobs import Img2ImgParams

TIMESTEP_SAMPLERS = ["DDIM", "PLMS", "UniPC", "DDIM CFG++"]


def with_sampler(job, sampler: str, **options):
    return with_options(replace(job, sampling=sampling_with(job.sampling, sampler)), {**job.options, **options})


def test_start_latent_is_noised_with_alphas_cumprod():
    from samplers.timesteps import ddim_timesteps

    alphas = torch.linspace(0.999, 0.01, 1000)
    init, noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(1, 4, 8, 8)
    steps = img2img_steps(8, 0.75, fix_steps=False)
    assert steps == Img2ImgSteps(steps=8, t_enc=6)
    timesteps = ddim_timesteps(8)
    params = Img2ImgParams(init_images=(), denoising_strength=0.75, extra_noise=0.5)
    begin = timestep_start(init, params, steps, InpaintState(), alphas, unipc=True)(noise, timesteps)
    a = alphas[timesteps[6]]
    expected = init * a.sqrt() + noise * (1 - a).sqrt() + noise * 0.5 * a.sqrt()
    assert torch.allclose(begin.x, expected)
    assert begin.schedule.tolist() == timesteps[:6].tolist()
    assert begin.sampler_kwargs == {"t_start": float(timesteps[5]) / 1000 + 1 / 1000}


def test_ddim_evaluates_the_timesteps_below_the_start(tiny_model):
    """DDIM's first model call is at timesteps[t_enc - 1] and it walks down to timesteps[1]."""
    from samplers.timesteps import ddim_timesteps
    from webui_api.engine.img2img import img2img_start, init_latents
    from webui_api.engine.pipeline import BatchSpec, SamplingHooks, resolve_plan, sample_batch
    from webui_api.progress import CancelToken

    job = with_sampler(img2img_job(0.75, steps=8), "DDIM")
    plan = resolve_plan(job)
    seen = []

    def recorder(cfg, batch, begin):
        def call(x, t, **extra):
            seen.append(int(t[0]))
            return cfg(x, t, **extra)
        return call

    with torch.inference_mode():
        init = init_latents(tiny_model, job, job.img2img)
        start = img2img_start(tiny_model, plan, init, job.img2img, img2img_steps(8, 0.75, False), InpaintState())
        sample_batch(tiny_model, job, plan, BatchSpec.of(job, 0), RecordingObserver(), CancelToken(), start,
                     SamplingHooks(wrap_denoiser=recorder))
    timesteps = ddim_timesteps(8).tolist()
    assert seen == [timesteps[j] for j in range(5, 0, -1)]


@pytest.mark.parametrize("sampler", TIMESTEP_SAMPLERS)
def test_every_timestep_sampler_runs_img2img_reproducibly(tiny_model, sampler):
    job = with_sampler(img2img_job(0.75, steps=8), sampler)
    first, observer = run_img2img_job(tiny_model, job)
    again, _ = run_img2img_job(tiny_model, job)
    weak, _ = run_img2img_job(tiny_model, with_sampler(img2img_job(0.4, steps=8), sampler))
    pictures = [np.asarray(r.images[0].image) for r in (first, again, weak)]
    assert pictures[0].shape == (64, 64, 3)
    assert np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[0], pictures[2])
    assert [e for e in observer.events if e[0] == "step"]


def test_ddim_with_nothing_to_walk_returns_the_noised_start(tiny_model):
    """t_enc < 2: A1111's DDIM loop runs zero times; the image is the barely noised init."""
    job = with_sampler(img2img_job(0.1, steps=8), "DDIM")
    result, observer = run_img2img_job(tiny_model, job)
    assert not [e for e in observer.events if e[0] == "step"]
    strong, _ = run_img2img_job(tiny_model, with_sampler(img2img_job(0.9, steps=8), "DDIM"))
    assert not np.array_equal(np.asarray(result.images[0].image), np.asarray(strong.images[0].image))


def test_unipc_with_fewer_steps_than_its_order_is_a_400(tiny_model):
    with pytest.raises(BadRequest, match="UniPC order"):
        run_img2img_job(tiny_model, with_sampler(img2img_job(0.3, steps=8), "UniPC"))


def test_timestep_inpainting_blends_before_every_model_call(tiny_model):
    """Timestep samplers blend the mask into x before every model call: the latent the UNet
    sees keeps the init latent outside the mask (latent columns 4..7 here)."""
    from PIL import Image

    from webui_api.engine.img2img import img2img_start, init_latents, inpaint_state
    from webui_api.engine.pipeline import BatchSpec, SamplingHooks, resolve_plan, sample_batch
    from webui_api.progress import CancelToken

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    job = with_sampler(img2img_job(0.75, steps=8, mask=mask), "DDIM")
    plan = resolve_plan(job)
    seen = []

    def recorder(cfg, batch, begin):
        def call(x, t, **extra):
            out = cfg(x, t, **extra)
            seen.append(cfg.last.x.clone())
            return out
        return call

    with torch.inference_mode():
        init, inpaint = inpaint_state(tiny_model, job, job.img2img, init_latents(tiny_model, job, job.img2img))
        start = img2img_start(tiny_model, plan, init, job.img2img, img2img_steps(8, 0.75, False), inpaint)
        sample_batch(tiny_model, job, plan, BatchSpec.of(job, 0), RecordingObserver(), CancelToken(), start,
                     SamplingHooks(wrap_denoiser=recorder))
    assert len(seen) == 5
    for x in seen:
        assert torch.equal(x[..., 4:], init[..., 4:]) and not torch.equal(x[..., :4], init[..., :4])

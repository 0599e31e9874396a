"""img2img as A1111 runs it: encode the init images, noise them to the start sigma that
denoising_strength picks, sample the tail of the schedule, decode.

The init images arrive already flattened and resized (webui_api.engine.image_prep, on the
request side). VAE encoding uses the posterior *mean*, where A1111 draws a sample from the
posterior with the unseeded global RNG: the difference is the posterior's tiny std, and the
mean makes results reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from samplers.registry import KIND_TIMESTEPS
from webui_api.engine.latents import decode_latents
from webui_api.engine.models import LoadedModel
from webui_api.engine.pipeline import (
    LATENT_SCALE,
    BatchSpec,
    SamplerPlan,
    SamplingStart,
    StartFn,
    batch_images,
    check_job,
    resolve_plan,
    sample_batch,
)
from webui_api.errors import BadRequest, NotImplementedFeature
from webui_api.jobs import GeneratedImage, GenerationJob, Img2ImgParams, JobResult
from webui_api.progress import CancelToken, RunObserver


@dataclass(frozen=True)
class Img2ImgSteps:
    """A1111's setup_img2img_steps: the schedule length and how many steps are skipped.

    The sampler walks sigmas[steps - t_enc - 1:], i.e. t_enc + 1 steps."""

    steps: int
    t_enc: int

    @property
    def start_index(self) -> int:
        return max(self.steps - self.t_enc - 1, 0)


def img2img_steps(requested: int, strength: float, fix_steps: bool) -> Img2ImgSteps:
    """Default: the schedule has `requested` steps and t_enc = int(min(strength, 0.999) * steps).
    With img2img_fix_steps the sampler runs exactly `requested` steps of a longer schedule
    (steps = int(requested / min(strength, 0.999))); at strength 0 that rule would give an
    empty schedule, so the default rule (one step at the lowest sigma) is used instead."""
    clipped = min(strength, 0.999)
    if fix_steps and strength > 0:
        return Img2ImgSteps(steps=max(int(requested / clipped), requested), t_enc=requested - 1)
    return Img2ImgSteps(steps=requested, t_enc=int(clipped * requested))


def check_img2img_job(job: GenerationJob) -> Img2ImgParams:
    """The job must be an img2img one with one init image per image of a batch."""
    check_job(job)
    params = job.img2img
    if job.kind != "img2img" or params is None:
        raise BadRequest(f"run_img2img needs an img2img job with init images; got kind {job.kind!r}")
    if len(params.init_images) != job.batch_size:
        raise BadRequest(f"img2img job has {len(params.init_images)} init images for batch_size {job.batch_size}")
    return params


def image_to_tensor(image) -> torch.Tensor:
    """An RGB PIL image to a (1, 3, H, W) float32 tensor in [-1, 1]."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def encode_image(model: LoadedModel, image) -> torch.Tensor:
    """VAE-encode one image into a (1, C, h, w) latent (posterior mean, scaled)."""
    x = image_to_tensor(image).to(device=model.device, dtype=model.vae.dtype)
    posterior = model.vae.encode(x, return_dict=False)[0]
    return posterior.mean.to(torch.float32) * model.vae_scale_factor


def init_latents(model: LoadedModel, job: GenerationJob, params: Img2ImgParams) -> torch.Tensor:
    """Every init image encoded separately (as A1111 does); for resize_mode 3 the latents,
    not the pixels, are resized to the job size (bilinear, A1111's latent upscale)."""
    size = (job.height // LATENT_SCALE, job.width // LATENT_SCALE)
    latents = []
    for image in params.init_images:
        latent = encode_image(model, image)
        if latent.shape[-2:] != size:
            latent = F.interpolate(latent, size=size, mode="bilinear")
        latents.append(latent)
    return torch.cat(latents).to(model.device)


def noised_start(init: torch.Tensor, params: Img2ImgParams, steps: Img2ImgSteps) -> StartFn:
    """xi = init + noise * multiplier * sigma_start (+ the same noise * img2img_extra_noise)."""

    def start(noise: torch.Tensor, schedule: torch.Tensor) -> SamplingStart:
        tail = schedule[steps.start_index :]
        if params.initial_noise_multiplier != 1.0:
            noise = noise * params.initial_noise_multiplier
        x = init.to(noise.dtype) + noise * tail[0]
        if params.extra_noise > 0:
            x = x + noise * params.extra_noise
        return SamplingStart(schedule=tail, x=x, model_interval=False)

    return start


def resolve_img2img_plan(job: GenerationJob) -> SamplerPlan:
    """The timestep samplers (DDIM, PLMS, UniPC...) start img2img differently (from an
    alphas-cumprod noising); that path is not built yet."""
    plan = resolve_plan(job)
    if plan.sampler.kind == KIND_TIMESTEPS:
        raise NotImplementedFeature(f"img2img with the {plan.sampler.name!r} sampler is not implemented yet")
    return plan


def infotext_extras(params: Img2ImgParams) -> dict[str, object]:
    """The infotext keys img2img adds (A1111's extra_generation_params)."""
    extras: dict[str, object] = {"Denoising strength": params.denoising_strength}
    if params.initial_noise_multiplier != 1.0:
        extras["Noise multiplier"] = params.initial_noise_multiplier
    if params.extra_noise > 0:
        extras["Extra noise"] = params.extra_noise
    return extras


def run_img2img(model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken) -> JobResult:
    """Generate every image of an img2img job, batch by batch (interrupt/skip as txt2img)."""
    params = check_img2img_job(job)
    steps = img2img_steps(job.sampling.steps, params.denoising_strength, params.fix_steps)
    schedule_job = replace(job, sampling=replace(job.sampling, steps=steps.steps))
    plan = resolve_img2img_plan(schedule_job)
    images: list[GeneratedImage] = []
    with torch.inference_mode():
        init = init_latents(model, job, params)
        for n in range(job.n_iter):
            if cancel.interrupted:
                break
            cancel.clear_skip()
            observer.batch_started(n, job.n_iter)
            batch = BatchSpec.of(job, n)
            start = noised_start(init, params, steps)
            latents = sample_batch(model, schedule_job, plan, batch, observer, cancel, start)
            auto_upcast = bool(job.options.get("auto_vae_precision", True))
            images += batch_images(batch, decode_latents(model, latents, auto_upcast))
            observer.batch_finished(n)
    return JobResult(images=images, interrupted=cancel.interrupted, extra_generation_params=infotext_extras(params))

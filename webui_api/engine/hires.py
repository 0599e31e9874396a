"""txt2img's hires fix as A1111 runs it: a first pass at the job size, an upscale (in latent
space, or decode -> pixel upscaler -> encode), a centre crop, then an img2img-style second
pass over the last hr-steps of a longer schedule with fresh noise of the new size.

Known differences: prompt-editing schedules of the second pass are laid out on that pass's
schedule length (A1111 uses its hires_steps), and the VAE encode of the pixel path uses the
posterior mean (see img2img).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from PIL import Image

from webui_api.engine.control import hires_pass_units
from webui_api.engine.img2img import InpaintState, encode_image, img2img_steps, noised_start, resolve_img2img_plan
from webui_api.engine.latents import decode_latents
from webui_api.engine.models import LoadedModel
from webui_api.engine.pipeline import LATENT_SCALE, BatchSpec, batch_images, check_job, resolve_plan, sample_batch
from webui_api.errors import BadRequest
from webui_api.jobs import GeneratedImage, GenerationJob, HiresParams, Img2ImgParams, JobResult
from webui_api.progress import CancelToken, RunObserver

PIXEL_UPSCALERS = {"None": None, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}


def pixel_upscale(picture: Image.Image, hires: HiresParams) -> Image.Image:
    """A1111's resize_image(0, ...) with a built-in upscaler: the upscaler's own resize by
    scale = max(W/w, H/h) when enlarging, then LANCZOS to the exact size."""
    if hires.upscaler not in PIXEL_UPSCALERS:
        raise BadRequest(f"hr_upscaler {hires.upscaler!r} is not available; use a latent mode, Lanczos, Nearest or None")
    size = (hires.upscale_width, hires.upscale_height)
    resample = PIXEL_UPSCALERS[hires.upscaler]
    scale = max(size[0] / picture.width, size[1] / picture.height)
    if resample is not None and scale > 1:
        picture = picture.resize((int(picture.width * scale), int(picture.height * scale)), resample=resample)
    return picture if picture.size == size else picture.resize(size, resample=Image.LANCZOS)


def upscale(model: LoadedModel, hires: HiresParams, latents: torch.Tensor, auto_upcast: bool) -> torch.Tensor:
    """First-pass latents to the target size: interpolated, or decoded/upscaled/encoded."""
    size = (hires.upscale_height // LATENT_SCALE, hires.upscale_width // LATENT_SCALE)
    if hires.latent_mode is not None:
        return F.interpolate(latents, size=size, mode=hires.latent_mode, antialias=hires.latent_antialias)
    pictures = decode_latents(model, latents, auto_upcast)
    return torch.cat([encode_image(model, pixel_upscale(picture, hires)) for picture in pictures]).to(latents.device)


def truncate(latents: torch.Tensor, hires: HiresParams) -> torch.Tensor:
    """The centre crop when both hr_resize_x and hr_resize_y were given (cover, then crop)."""
    tx, ty = hires.truncate_x, hires.truncate_y
    return latents[:, :, ty // 2 : latents.shape[2] - (ty + 1) // 2, tx // 2 : latents.shape[3] - (tx + 1) // 2]


def second_pass_job(job: GenerationJob, hires: HiresParams, latents: torch.Tensor) -> GenerationJob:
    """The second pass as a job of its own: target size, hires sampler and prompts."""
    height, width = latents.shape[2] * LATENT_SCALE, latents.shape[3] * LATENT_SCALE
    return replace(
        job, width=width, height=height, sampling=hires.sampling, prompts=hires.prompts,
        negative_prompts=hires.negative_prompts, hires=None, controlnet_units=hires_pass_units(job.controlnet_units),
    )


def second_pass(
    model: LoadedModel, job: GenerationJob, latents: torch.Tensor, batch_no: int, observer: RunObserver, cancel: CancelToken
) -> torch.Tensor:
    """A1111's sample_img2img with explicit steps (always the fix-steps rule); strength 0
    gives the upscaled latents back unsampled."""
    hires = job.hires
    steps = img2img_steps(hires.steps, hires.denoising_strength, fix_steps=True)
    if steps.steps == 0:
        return latents
    hr_job = second_pass_job(job, hires, latents)
    hr_job = replace(hr_job, sampling=replace(hr_job.sampling, steps=steps.steps))
    plan = resolve_img2img_plan(hr_job)
    params = Img2ImgParams(init_images=(), denoising_strength=hires.denoising_strength,
                           extra_noise=float(job.options.get("img2img_extra_noise", 0.0) or 0.0))
    start = noised_start(latents, params, steps, InpaintState())
    return sample_batch(model, hr_job, plan, BatchSpec.of(hr_job, batch_no), observer, cancel, start)


def check_hires_job(job: GenerationJob) -> HiresParams:
    check_job(job)
    if job.hires is None or len(job.hires.prompts) != job.image_count:
        raise BadRequest("run_hires needs a txt2img job with hires params and one hires prompt per image")
    return job.hires


def run_hires(model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken) -> JobResult:
    """Both passes for every batch; progress counts two jobs per batch, as A1111 does."""
    hires = check_hires_job(job)
    plan = resolve_plan(job)
    auto_upcast = bool(job.options.get("auto_vae_precision", True))
    images: list[GeneratedImage] = []
    with torch.inference_mode():
        for n in range(job.n_iter):
            if cancel.interrupted:
                break
            cancel.clear_skip()
            observer.batch_started(n, job.n_iter)  # A1111's "Batch n out of N" text; job_no counts passes
            batch = BatchSpec.of(job, n)
            latents = sample_batch(model, job, plan, batch, observer, cancel)
            observer.batch_finished(2 * n)
            if not cancel.interrupted:
                observer.batch_started(n, job.n_iter)
                upscaled = truncate(upscale(model, hires, latents, auto_upcast), hires)
                latents = second_pass(model, job, upscaled, n, observer, cancel)
            images += batch_images(batch, decode_latents(model, latents, auto_upcast))
            observer.batch_finished(2 * n + 1)
    extras = {"Denoising strength": hires.denoising_strength, **dict(hires.infotext)}
    return JobResult(images=images, interrupted=cancel.interrupted, extra_generation_params=extras)

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
from PIL import Image

from samplers.registry import KIND_TIMESTEPS
from webui_api.engine.denoiser import InpaintBlend, PaddingRecord, make_inner
from webui_api.engine.latents import decode_latents
from webui_api.engine.masks import finish_output
from webui_api.engine.models import LoadedModel
from webui_api.engine.pipeline import (
    LATENT_SCALE,
    BatchSpec,
    SamplerPlan,
    SamplingStart,
    StartFn,
    batch_images,
    check_job,
    job_batches,
    make_image_rng,
    make_schedule,
    resolve_plan,
    unipc_options,
)
from webui_api.engine.refiner import CompanionModels, PassContext, refiner_run, sample_pass
from webui_api.engine.rng import ImageRNG
from webui_api.engine.vae_tiling import tiling_for_encode
from webui_api.errors import BadRequest
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
    With img2img_fix_steps (and always for the hires pass) the sampler runs exactly `requested`
    steps of a longer schedule, steps = int(requested / min(strength, 0.999)); at strength 0
    that schedule is empty and A1111 hands the init latent back unsampled (`steps == 0`)."""
    clipped = min(strength, 0.999)
    if fix_steps:
        return Img2ImgSteps(steps=int(requested / clipped) if strength > 0 else 0, t_enc=requested - 1)
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
    return _encode_tensor(model, image_to_tensor(image))


def _encode_tensor(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """VAE-encode a (1, 3, H, W) tensor in [-1, 1] (posterior mean, scaled)."""
    with tiling_for_encode(model.vae, model.vae_tiling, x.shape[-2], x.shape[-1]):
        posterior = model.vae.encode(x.to(device=model.device, dtype=model.vae.dtype), return_dict=False)[0]
    return (posterior.mean.to(torch.float32) - model.vae_shift_factor) * model.vae_scale_factor


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


@dataclass(frozen=True)
class InpaintState:
    """The latent-side inpainting of a job: the blend (None without a mask) and the
    9-channel UNets' image conditioning (None for ordinary UNets)."""

    blend: InpaintBlend | None = None
    image_cond: torch.Tensor | None = None


def noised_start(init: torch.Tensor, params: Img2ImgParams, steps: Img2ImgSteps, inpaint: InpaintState) -> StartFn:
    """xi = init + noise * multiplier * sigma_start (+ the same noise * img2img_extra_noise)."""

    def start(noise: torch.Tensor, schedule: torch.Tensor) -> SamplingStart:
        tail = schedule[steps.start_index :]
        if params.initial_noise_multiplier != 1.0:
            noise = noise * params.initial_noise_multiplier
        x = init.to(noise.dtype) + noise * tail[0]
        if params.extra_noise > 0:
            x = x + noise * params.extra_noise
        return SamplingStart(tail, x, model_interval=False, blend=inpaint.blend, image_cond=inpaint.image_cond)

    return start


def timestep_start(
    init: torch.Tensor, params: Img2ImgParams, steps: Img2ImgSteps, inpaint: InpaintState, alphas_cumprod: torch.Tensor,
    unipc: bool = False,
) -> StartFn:
    """A1111's timestep-sampler img2img (DDIM, PLMS, UniPC, DDIM CFG++): the sampler walks
    timesteps[:t_enc] and starts from the init latent noised with ᾱ at timesteps[t_enc]:
    xi = init * sqrt(ᾱ) + noise * sqrt(1 - ᾱ) (+ noise * extra_noise * sqrt(ᾱ)). UniPC also
    gets A1111's t_start = timesteps[t_enc - 1] / 1000 + 1 / 1000."""

    def start(noise: torch.Tensor, timesteps: torch.Tensor) -> SamplingStart:
        if params.initial_noise_multiplier != 1.0:
            noise = noise * params.initial_noise_multiplier
        alpha = alphas_cumprod.to(noise.device)[timesteps[steps.t_enc]]
        x = init.to(noise.dtype) * alpha.sqrt() + noise * (1 - alpha).sqrt()
        if params.extra_noise > 0:
            x = x + noise * params.extra_noise * alpha.sqrt()
        tail = timesteps[: steps.t_enc]
        extra = {"t_start": float(tail[-1]) / 1000 + 1 / 1000} if unipc and len(tail) else {}
        return SamplingStart(tail, x, model_interval=False, blend=inpaint.blend, image_cond=inpaint.image_cond,
                             sampler_kwargs=extra)

    return start


def img2img_start(
    model: LoadedModel, plan: SamplerPlan, init: torch.Tensor, params: Img2ImgParams, steps: Img2ImgSteps,
    inpaint: InpaintState,
) -> StartFn:
    """The start for the plan's sampler family (k-diffusion sigmas or timesteps)."""
    if plan.sampler.kind == KIND_TIMESTEPS:
        return timestep_start(
            init, params, steps, inpaint, model.alphas_cumprod, unipc=plan.sampler.takes_unipc_options
        )
    return noised_start(init, params, steps, inpaint)


def runs_sampler(plan: SamplerPlan, steps: Img2ImgSteps) -> bool:
    """Timestep samplers need two timesteps to take a step: with t_enc < 2 A1111's DDIM loop
    runs zero times and hands back the noised start unchanged."""
    return plan.sampler.kind != KIND_TIMESTEPS or steps.t_enc >= 2


def check_timestep_steps(job: GenerationJob, plan: SamplerPlan, steps: Img2ImgSteps) -> None:
    """UniPC cannot take fewer steps than its order (A1111 fails the same way)."""
    if not plan.sampler.takes_unipc_options or steps.steps == 0:
        return
    order = unipc_options(job).order
    if steps.t_enc < order:
        raise BadRequest(
            f"UniPC order must be < sampling steps: order {order}, {steps.t_enc} img2img steps"
            " (raise steps or denoising_strength, or lower the uni_pc_order option)"
        )


def unsampled_start(
    model: LoadedModel, job: GenerationJob, batch: BatchSpec, plan: SamplerPlan, start: StartFn
) -> torch.Tensor:
    """The noised start itself, for a timestep sampler with nothing to walk (t_enc < 2)."""
    noise = make_image_rng(model, job, batch).first()
    inner = make_inner(model, plan.sampler.kind)
    return start(noise, make_schedule(model, job, plan, inner)).x


# ---------------------------------------------------------------------------
# Inpainting, latent side
# ---------------------------------------------------------------------------


def latent_mask(model: LoadedModel, params: Img2ImgParams, latent_shape: torch.Size) -> torch.Tensor:
    """A1111's latmask (1 = repaint): the mask resized bicubically to the latent size, /255,
    rounded with mask_round, repeated over the latent channels."""
    height, width = latent_shape[-2:]
    small = params.mask.convert("RGB").resize((width, height), resample=Image.Resampling.BICUBIC)
    values = np.asarray(small, dtype=np.float32)[:, :, 0] / 255.0
    if params.mask_round:
        values = np.around(values)
    mask = torch.from_numpy(values).to(model.device)
    return mask.expand(latent_shape[1], height, width).unsqueeze(0)


def fill_latent(
    model: LoadedModel, job: GenerationJob, init: torch.Tensor, latmask: torch.Tensor, fill: int
) -> torch.Tensor:
    """inpainting_fill 2 (latent noise: the first batch's seeds' unit noise in the mask) and
    3 (latent nothing: zeros in the mask); 0 and 1 leave the latent as encoded."""
    if fill == 3:
        return init * (1 - latmask)
    if fill != 2:
        return init
    seeds = job.seeds.seeds[job.batch_slice(0)]
    rng = ImageRNG(tuple(init.shape[1:]), seeds, source=job.seeds.randn_source, device=model.device)
    return init * (1 - latmask) + rng.first().to(init.dtype) * latmask


def inpaint_image_cond(model: LoadedModel, params: Img2ImgParams, latent_shape: torch.Size) -> torch.Tensor | None:
    """9-channel UNets: [mask (1 ch, nearest), VAE latent of the image with the mask area
    greyed out by inpainting_mask_weight (4 ch)] per image; no mask means all ones."""
    if model.unet_in_channels != 9:
        return None
    height, width = params.init_images[0].height, params.init_images[0].width
    cmask = _pixel_mask(params, height, width).to(model.device)
    latents = []
    for image in params.init_images:
        source = image_to_tensor(image).to(model.device)
        masked = source * (1.0 - cmask * params.inpainting_mask_weight)
        latents.append(_encode_tensor(model, masked))
    small = F.interpolate(cmask, size=tuple(latent_shape[-2:]), mode="nearest")
    return torch.cat([small.expand(len(latents), -1, -1, -1), torch.cat(latents)], dim=1)


def _pixel_mask(params: Img2ImgParams, height: int, width: int) -> torch.Tensor:
    """The image mask as (1, 1, H, W) in [0, 1] (rounded with mask_round); all ones without one."""
    if params.mask is None:
        return torch.ones(1, 1, height, width)
    values = torch.from_numpy(np.asarray(params.mask.convert("L"), dtype=np.float32) / 255.0)
    if params.mask_round:
        values = torch.round(values)
    return values[None, None]


EDIT_CHANNELS = 8  # instruct-pix2pix UNets: latent + the init image's (unscaled) latent


def edit_image_cond(model: LoadedModel, params: Img2ImgParams) -> torch.Tensor:
    """A1111's edit_image_conditioning: each init image's VAE posterior mode, *not* multiplied
    by the scale factor (instruct-pix2pix was trained on unscaled latents)."""
    latents = []
    for image in params.init_images:
        source = image_to_tensor(image).to(device=model.device, dtype=model.vae.dtype)
        with tiling_for_encode(model.vae, model.vae_tiling, source.shape[-2], source.shape[-1]):
            latents.append(model.vae.encode(source, return_dict=False)[0].mode().to(torch.float32))
    return torch.cat(latents)


def for_model(job: GenerationJob, model: LoadedModel) -> GenerationJob:
    """A1111 keeps image_cfg_scale only for instruct-pix2pix ("edit") models."""
    params = job.img2img
    if params is None or params.image_cfg_scale is None or model.unet_in_channels == EDIT_CHANNELS:
        return job
    return replace(job, img2img=replace(params, image_cfg_scale=None))


def inpaint_state(
    model: LoadedModel, job: GenerationJob, params: Img2ImgParams, init: torch.Tensor
) -> tuple[torch.Tensor, InpaintState]:
    """The init latent after the latent fill, and the blend/image conditioning to sample with."""
    image_cond: torch.Tensor | None
    if model.unet_in_channels == EDIT_CHANNELS:
        image_cond = edit_image_cond(model, params)
    else:
        image_cond = inpaint_image_cond(model, params, init.shape)
    if params.mask is None:
        return init, InpaintState(image_cond=image_cond)
    latmask = latent_mask(model, params, init.shape)
    filled = fill_latent(model, job, init, latmask, params.inpainting_fill)
    return filled, InpaintState(blend=InpaintBlend.from_latent_mask(filled, latmask), image_cond=image_cond)


def overlaid(pictures: list, params: Img2ImgParams, job: GenerationJob) -> list:
    """Paste the kept original pixels back over each output (option overlay_inpaint)."""
    if not params.overlays:
        return pictures
    composite = job.engine_options.overlay_inpaint
    overlays = params.overlays
    return [
        finish_output(picture, overlays[i % len(overlays)], params.paste_to, composite)
        for i, picture in enumerate(pictures)
    ]


def resolve_img2img_plan(job: GenerationJob) -> SamplerPlan:
    """The job's sampler and scheduler (every sampler family can start from an init image)."""
    return resolve_plan(job)


def infotext_extras(params: Img2ImgParams) -> dict[str, object]:
    """The infotext keys img2img adds (A1111's extra_generation_params)."""
    extras: dict[str, object] = {"Denoising strength": params.denoising_strength}
    if params.image_cfg_scale is not None:
        extras["Image CFG scale"] = params.image_cfg_scale
    extras.update(dict(params.mask_infotext))
    if params.initial_noise_multiplier != 1.0:
        extras["Noise multiplier"] = params.initial_noise_multiplier
    if params.extra_noise > 0:
        extras["Extra noise"] = params.extra_noise
    return extras


def run_img2img(
    model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken,
    models: CompanionModels | None = None,
) -> JobResult:
    """Generate every image of an img2img job, batch by batch (interrupt/skip as txt2img);
    `models` holds the refiner, when the job has one."""
    job = for_model(job, model)
    params = check_img2img_job(job)
    steps = img2img_steps(job.sampling.steps, params.denoising_strength, params.fix_steps)
    schedule_job = replace(job, sampling=replace(job.sampling, steps=max(steps.steps, 1)))
    plan = resolve_img2img_plan(schedule_job)
    check_timestep_steps(schedule_job, plan, steps)
    run = refiner_run(job, models) if models is not None else None
    ctx = PassContext(schedule_job, plan, launch_steps=steps.t_enc + 1)
    padding = PaddingRecord()
    images: list[GeneratedImage] = []
    with torch.inference_mode():
        init, inpaint = inpaint_state(model, job, params, init_latents(model, job, params))
        for batch in job_batches(job, observer, cancel):
            latents, finished = init, model
            start = img2img_start(model, plan, init, params, steps, inpaint)
            if steps.steps > 0 and runs_sampler(plan, steps):
                latents, finished = sample_pass(model, run, ctx, batch, observer, cancel, start, padding)
            elif steps.steps > 0:
                latents = unsampled_start(model, schedule_job, batch, plan, start)
            if inpaint.blend is not None:
                latents = inpaint.blend(latents)
            auto_upcast = job.engine_options.auto_vae_precision
            images += batch_images(batch, overlaid(decode_latents(finished, latents, auto_upcast), params, job))
            observer.batch_finished(batch.index)
    extras = {**infotext_extras(params), **(run.infotext if run is not None else {})}
    return JobResult(images=images, interrupted=cancel.interrupted, extra_generation_params=extras,
                     cond_padding=padding.infotext())

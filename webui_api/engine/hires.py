"""txt2img's hires fix as A1111 runs it: a first pass at the job size, an upscale (in latent
space, or decode -> pixel upscaler -> encode), a centre crop, then an img2img-style second
pass over the last hr-steps of a longer schedule with fresh noise of the new size.

Which model does what, as in A1111: the second pass samples with `hr_checkpoint_name` when
set (else the main checkpoint again); the pixel path decodes with the model that finished
the first pass and encodes with the second pass's; a refiner may take over in either pass
(option `hires_fix_refiner_pass`), and the model that finished a pass decodes its latents.
Prompt-editing schedules of the second pass are laid out as A1111 does: first-pass total
steps as the base and the hires total steps as the frame (`[a:b:15]` with 10 + 10 steps
switches 5 steps into the hires pass). Pixel upscalers: the PIL built-ins and every model
file of the upscaler catalog (ESRGAN family, loaded with spandrel).

Known difference: the VAE encode of the pixel path uses the posterior mean (see img2img).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from webui_api.engine.cond_types import BatchConditioning
from webui_api.engine.conditioning import build_batch_conditioning
from webui_api.engine.control import hires_pass_units
from webui_api.engine.denoiser import PaddingRecord
from webui_api.engine.img2img import (
    InpaintState,
    check_timestep_steps,
    encode_image,
    img2img_start,
    img2img_steps,
    runs_sampler,
    unsampled_start,
)
from webui_api.engine.latents import decode_latents
from webui_api.engine.models import CheckpointInfo, LoadedModel
from webui_api.engine.networks import parse_prompt_networks
from webui_api.engine.pipeline import (
    LATENT_SCALE,
    BatchSpec,
    SamplerPlan,
    batch_images,
    check_job,
    job_batches,
    resolve_plan,
    total_steps,
)
from webui_api.engine.refiner import CompanionModels, PassContext, RefinerRun, refiner_run, sample_pass, short_title
from webui_api.errors import BadRequest
from webui_api.jobs import GeneratedImage, GenerationJob, HiresParams, Img2ImgParams, JobResult
from webui_api.progress import CancelToken, RunObserver

PIXEL_UPSCALERS = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}

# (picture, target width, target height) -> the picture at exactly that size
PixelUpscale = Callable[[Image.Image, int, int], Image.Image]
# one batch's first-pass pictures, decoded in full (A1111's save_images_before_highres_fix)
FirstPassSink = Callable[[list[Image.Image]], None]


# ---------------------------------------------------------------------------
# Upscaling
# ---------------------------------------------------------------------------


def builtin_pixel_upscale(name: str) -> PixelUpscale:
    """A1111's resize_image(0, ...) with a built-in upscaler: the upscaler's own resize by
    scale = max(W/w, H/h) when enlarging, then LANCZOS to the exact size."""
    resample = PIXEL_UPSCALERS[name]

    def resize(picture: Image.Image, width: int, height: int) -> Image.Image:
        scale = max(width / picture.width, height / picture.height)
        if resample is not None and scale > 1:
            picture = picture.resize((int(picture.width * scale), int(picture.height * scale)), resample=resample)
        return (
            picture
            if picture.size == (width, height)
            else picture.resize((width, height), resample=Image.Resampling.LANCZOS)
        )

    return resize


def catalog_pixel_upscale(catalog: Any, name: str) -> PixelUpscale:
    """resize_image(0, ...) with an upscaler of the catalog (ESRGAN & co.): when enlarging, the
    upscaler's own loop to scale = max(W/w, H/h) (A1111's Upscaler.upscale), then LANCZOS to
    the exact size. Unknown names fail here, before any sampling, listing what exists."""
    catalog.find(name)

    def resize(picture: Image.Image, width: int, height: int) -> Image.Image:
        scale = max(width / picture.width, height / picture.height)
        if scale > 1:
            picture = catalog.upscale(picture, name, scale)
        return (
            picture
            if picture.size == (width, height)
            else picture.resize((width, height), resample=Image.Resampling.LANCZOS)
        )

    return resize


def pixel_upscaler(hires: HiresParams, catalog: Any = None) -> PixelUpscale | None:
    """The pixel upscaler a hires job names (None for latent upscaling)."""
    if hires.latent_mode is not None:
        return None
    if catalog is not None:
        return catalog_pixel_upscale(catalog, hires.upscaler)
    if hires.upscaler not in PIXEL_UPSCALERS:
        raise BadRequest(
            f"hr_upscaler {hires.upscaler!r} is not available; use a latent mode, Lanczos, Nearest or None"
        )
    return builtin_pixel_upscale(hires.upscaler)


def pixel_upscale(picture: Image.Image, hires: HiresParams) -> Image.Image:
    """A built-in pixel upscaler to the hires target size."""
    resize = pixel_upscaler(hires)
    if resize is None:
        raise BadRequest(f"hr_upscaler {hires.upscaler!r} is a latent mode, not a pixel upscaler")
    return resize(picture, hires.upscale_width, hires.upscale_height)


@dataclass(frozen=True)
class UpscaleModels:
    """Who decodes the first pass (the model that finished it) and who encodes for the second."""

    decoder: LoadedModel
    encoder: LoadedModel


def upscale(
    models: UpscaleModels | LoadedModel, hires: HiresParams, latents: torch.Tensor, auto_upcast: bool,
    resize: PixelUpscale | None = None,
) -> torch.Tensor:
    """First-pass latents to the target size: interpolated, or decoded/upscaled/encoded."""
    if isinstance(models, LoadedModel):
        models = UpscaleModels(models, models)
    size = (hires.upscale_height // LATENT_SCALE, hires.upscale_width // LATENT_SCALE)
    if hires.latent_mode is not None:
        return F.interpolate(latents, size=size, mode=hires.latent_mode, antialias=hires.latent_antialias)
    resize = resize or pixel_upscaler(hires)
    assert resize is not None  # not a latent mode, so pixel_upscaler gave one
    pictures = decode_latents(models.decoder, latents, auto_upcast)
    encoded = [encode_image(models.encoder, resize(p, hires.upscale_width, hires.upscale_height)) for p in pictures]
    return torch.cat(encoded).to(latents.device)


def truncate(latents: torch.Tensor, hires: HiresParams) -> torch.Tensor:
    """The centre crop when both hr_resize_x and hr_resize_y were given (cover, then crop)."""
    tx, ty = hires.truncate_x, hires.truncate_y
    return latents[:, :, ty // 2 : latents.shape[2] - (ty + 1) // 2, tx // 2 : latents.shape[3] - (tx + 1) // 2]


# ---------------------------------------------------------------------------
# The second pass
# ---------------------------------------------------------------------------


def second_pass_job(job: GenerationJob, hires: HiresParams, latents: torch.Tensor) -> GenerationJob:
    """The second pass as a job of its own: target size, hires sampler and prompts."""
    height, width = latents.shape[2] * LATENT_SCALE, latents.shape[3] * LATENT_SCALE
    return replace(
        job, width=width, height=height, sampling=hires.sampling, prompts=hires.prompts,
        negative_prompts=hires.negative_prompts, hires=None, controlnet_units=hires_pass_units(job.controlnet_units),
    )


def hires_conditioning(
    job: GenerationJob, plan: SamplerPlan, hr_plan: SamplerPlan
) -> Callable[[LoadedModel, BatchSpec], BatchConditioning]:
    """A1111's calculate_hr_conds: the hires prompts at the upscale target size, schedules laid
    out with the first pass's total steps as base and the hires total steps as frame. Their
    <lora:...> tags are removed before encoding; the engine has merged the hires prompt's
    own networks by then (HiresRun.select_networks)."""
    hires = hires_params(job)
    base = total_steps(job, plan)
    frame = hr_plan.sampler.total_steps(hires.steps)

    def build(model: LoadedModel, batch: BatchSpec) -> BatchConditioning:
        prompts = tuple(parse_prompt_networks(prompt)[0] for prompt in batch.prompts)
        return build_batch_conditioning(
            model, prompts, batch.negative_prompts, base, job.clip_skip, job.engine_options,
            width=hires.upscale_width, height=hires.upscale_height, hires_steps=frame, embeddings=model.embeddings,
        )

    return build


@dataclass
class HiresRun:
    """One hires job's fixed parts: both plans, the second pass's steps, the models."""

    job: GenerationJob
    plan: SamplerPlan
    hr_plan: SamplerPlan
    main: LoadedModel
    companions: CompanionModels | None
    checkpoint: CheckpointInfo | None  # hr_checkpoint_name, resolved
    refiner: RefinerRun | None
    resize: PixelUpscale | None
    first_pass: FirstPassSink | None = None  # save_images_before_highres_fix
    padding: PaddingRecord = field(default_factory=PaddingRecord)  # both passes' cond padding (infotext)

    def second_model(self) -> LoadedModel:
        """The second pass's model: the hires checkpoint, else the main one (A1111 reloads it)."""
        if self.checkpoint is None or self.companions is None:
            return self.main
        return self.companions.get(self.checkpoint)

    def select_networks(self, is_hires: bool) -> None:
        """A1111 activates the prompt's networks before each first pass and the hires
        prompt's own before each second pass (a no-op when both name the same LoRAs)."""
        if self.companions is not None and self.companions.networks is not None:
            self.companions.networks.select(is_hires)

    def infotext(self) -> dict[str, Any]:
        """Denoising strength, then Hires checkpoint, then the request-side hires keys."""
        hires = hires_params(self.job)
        extras: dict[str, Any] = {"Denoising strength": hires.denoising_strength}
        if self.checkpoint is not None:
            extras["Hires checkpoint"] = short_title(self._loaded_info(self.checkpoint))
        extras.update(dict(hires.infotext))
        if self.refiner is not None:
            extras.update(self.refiner.infotext)
        return extras

    def _loaded_info(self, info: CheckpointInfo) -> CheckpointInfo:
        """The catalog entry as it is now (hashed once loaded)."""
        if self.companions is None:
            return info
        return next((c for c in self.companions.engine.checkpoints() if c.filename == info.filename), info)


def hires_run(model: LoadedModel, job: GenerationJob, models: CompanionModels | None) -> HiresRun:
    """Resolve everything a hires job names before the first step: plans, the hires
    checkpoint, the refiner, the pixel upscaler (unknown names fail here)."""
    hires = check_hires_job(job)
    plan = resolve_plan(job)
    hr_plan = resolve_plan(replace(job, sampling=hires.sampling))
    title = getattr(hires, "checkpoint_title", None)
    if title is not None and models is None:
        raise BadRequest("hr_checkpoint_name needs the engine's checkpoint catalog; run the job through Engine.txt2img")
    checkpoint = models.resolve(title) if title is not None and models is not None else None
    catalog = models.engine.upscaler_catalog() if models is not None and hires.latent_mode is None else None
    refiner = refiner_run(job, models) if models is not None else None
    return HiresRun(job, plan, hr_plan, model, models, checkpoint, refiner, pixel_upscaler(hires, catalog))


def second_pass(
    hr: HiresRun, model: LoadedModel, latents: torch.Tensor, batch_no: int, observer: RunObserver, cancel: CancelToken
) -> tuple[torch.Tensor, LoadedModel]:
    """A1111's sample_img2img with explicit steps (always the fix-steps rule); strength 0
    gives the upscaled latents back unsampled. Returns the latents and the model that
    finished them."""
    job, hires = hr.job, hires_params(hr.job)
    steps = img2img_steps(hires.steps, hires.denoising_strength, fix_steps=True)
    if steps.steps == 0:
        return latents, model
    hr_job = second_pass_job(job, hires, latents)
    hr_job = replace(hr_job, sampling=replace(hr_job.sampling, steps=steps.steps))
    check_timestep_steps(hr_job, hr.hr_plan, steps)
    params = Img2ImgParams(init_images=(), denoising_strength=hires.denoising_strength,
                           extra_noise=job.engine_options.img2img_extra_noise)
    start = img2img_start(model, hr.hr_plan, latents, params, steps, InpaintState())
    batch = BatchSpec.of(hr_job, batch_no)
    if not runs_sampler(hr.hr_plan, steps):
        return unsampled_start(model, hr_job, batch, hr.hr_plan, start), model
    ctx = PassContext(hr_job, hr.hr_plan, launch_steps=steps.t_enc + 1, is_hires=True, hires_enabled=True,
                      conditioning=hires_conditioning(job, hr.plan, hr.hr_plan))
    return sample_pass(model, hr.refiner, ctx, batch, observer, cancel, start, hr.padding)


def hires_params(job: GenerationJob) -> HiresParams:
    """The hires params of a job check_hires_job accepted."""
    if job.hires is None:
        raise BadRequest("run_hires needs a txt2img job with hires params")
    return job.hires


def check_hires_job(job: GenerationJob) -> HiresParams:
    check_job(job)
    if job.hires is None or len(job.hires.prompts) != job.image_count:
        raise BadRequest("run_hires needs a txt2img job with hires params and one hires prompt per image")
    return job.hires


def hires_batch(
    hr: HiresRun, batch: BatchSpec, auto_upcast: bool, observer: RunObserver, cancel: CancelToken
) -> tuple[torch.Tensor, LoadedModel]:
    """Both passes of one batch; returns the final latents and the model that decodes them."""
    n, hires = batch.index, hires_params(hr.job)
    first_ctx = PassContext(hr.job, hr.plan, launch_steps=hr.job.sampling.steps, hires_enabled=True)
    hr.select_networks(is_hires=False)
    latents, finished = sample_pass(hr.main, hr.refiner, first_ctx, batch, observer, cancel, padding=hr.padding)
    observer.batch_finished(2 * n)
    if cancel.interrupted:
        return latents, finished
    if hr.first_pass is not None:
        hr.first_pass(decode_latents(finished, latents, auto_upcast))
    observer.batch_started(n, hr.job.n_iter)
    hr.select_networks(is_hires=True)
    model = hr.second_model()
    upscaled = truncate(upscale(UpscaleModels(finished, model), hires, latents, auto_upcast, hr.resize), hires)
    return second_pass(hr, model, upscaled, n, observer, cancel)


def run_hires(
    model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken,
    models: CompanionModels | None = None, first_pass: FirstPassSink | None = None,
) -> JobResult:
    """Both passes for every batch; progress counts two jobs per batch, as A1111 does.
    `models` (from the engine) serves the hires checkpoint, the refiner and model upscalers;
    without it only the main model and the built-in upscalers are available. `first_pass`
    gets each batch's first-pass pictures (decoded by the model that finished the pass)
    before its second pass, unless the job was interrupted, as A1111 saves them."""
    hr = replace(hires_run(model, job, models), first_pass=first_pass)
    auto_upcast = job.engine_options.auto_vae_precision
    images: list[GeneratedImage] = []
    with torch.inference_mode():
        for batch in job_batches(job, observer, cancel):  # A1111's "Batch n out of N" text; job_no counts passes
            latents, finished = hires_batch(hr, batch, auto_upcast, observer, cancel)
            images += batch_images(batch, decode_latents(finished, latents, auto_upcast))
            observer.batch_finished(2 * batch.index + 1)
    return JobResult(images=images, interrupted=cancel.interrupted, extra_generation_params=hr.infotext(),
                     cond_padding=hr.padding.infotext())

"""The generation loop that Flux and SD3 share: both are rectified-flow models sampled the same way.

Sigma runs from 1 to 0 and a batch starts from `noise * sigma_max`; img2img and the hires pass
start on the schedule's tail at A1111's start step with x = s*noise + (1-s)*init. What differs
between the families (job checks, sigma table, text conditioning, infotext) comes in a `FlowFamily`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any, Protocol

import torch

from webui_api.engine.denoiser import SamplingInterrupted
from webui_api.engine.latents import decode_latents, to_pil
from webui_api.engine.models import LoadedModel
from webui_api.engine.pipeline import BatchSpec, SamplerPlan, batch_images, job_batches, make_image_rng
from webui_api.jobs import GeneratedImage, GenerationJob, HiresParams, JobResult
from webui_api.progress import CancelToken, RunObserver


class FlowDenoiser(Protocol):
    """What `sample` needs of a flow model's denoiser (Flux's, SD3's)."""

    last_cond_x0: torch.Tensor | None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


def module_infotext(model: LoadedModel, job: GenerationJob) -> dict[str, Any]:
    """Forge's "Module 1..n": each forge_additional_modules entry of the job, in its order, as
    `splitext(basename(name))[0]` (Forge's processing.py). A job that named none gets the files
    the model was built with (found in models/VAE and models/text_encoder; Forge would have
    refused such a job), so the infotext still says which files made the image."""
    names = job.engine_options.forge_additional_modules or model.module_files
    stems = [PurePath(str(name).replace("\\", "/")).stem for name in names]
    return {f"Module {index}": stem for index, stem in enumerate(stems, start=1)}


def no_hires_infotext(model: LoadedModel, hires: HiresParams) -> dict[str, Any]:
    """A family with nothing of its own to add to the hires pass's infotext."""
    return {}


@dataclass(frozen=True)
class FlowFamily:
    """The parts of a flow family that the shared loop calls (one instance per family)."""

    check_job: Callable[[LoadedModel, GenerationJob], SamplerPlan]
    sigmas: Callable[[LoadedModel, GenerationJob, SamplerPlan], torch.Tensor]  # CPU float32, ending in 0
    make_denoiser: Callable[[LoadedModel, GenerationJob, BatchSpec, CancelToken, Any], FlowDenoiser]
    infotext: Callable[[LoadedModel, GenerationJob], dict[str, Any]]
    hires_infotext: Callable[[LoadedModel, HiresParams], dict[str, Any]] = no_hires_infotext


def sample(
    denoiser: FlowDenoiser, plan: SamplerPlan, x: torch.Tensor, sigmas: torch.Tensor,
    job: GenerationJob, observer: RunObserver, rng: Any,
) -> torch.Tensor:
    total = len(sigmas) - 1

    def callback(info: dict) -> None:
        observer.sampling_step(int(info["i"]), total, lambda: rough_preview(info["denoised"]))

    function = plan.sampler.function
    if function is None:  # resolve_sampler refuses unimplemented samplers before a job is built
        raise ValueError(f"sampler {plan.sampler.name!r} is not implemented")
    accepted = inspect.signature(function).parameters
    kwargs: dict[str, Any] = {}
    if "noise_sampler" in accepted:  # drawn every step (unused without churn), as A1111 does
        kwargs["noise_sampler"] = lambda sigma, sigma_next: rng.next()
    churn = {"s_churn": job.sampling.s_churn, "s_tmin": job.sampling.s_tmin,
             "s_tmax": job.sampling.s_tmax, "s_noise": job.sampling.s_noise}
    kwargs.update({name: value for name, value in churn.items() if name in accepted})
    try:
        return function(denoiser, x, sigmas, extra_args={}, callback=callback, disable=True, **kwargs)
    except SamplingInterrupted:
        return x if denoiser.last_cond_x0 is None else denoiser.last_cond_x0


def rough_preview(latents: torch.Tensor) -> Any:
    """A cheap live preview: the 16 latent channels averaged in three groups (no calibrated
    coefficients for the flow models' latent spaces yet)."""
    latent = latents[0].float()
    groups = torch.stack([latent[0:5].mean(0), latent[5:11].mean(0), latent[11:16].mean(0)])
    return to_pil(groups.clamp(-1, 1))


def first_pass(
    family: FlowFamily, model: LoadedModel, job: GenerationJob, plan: SamplerPlan, batch: BatchSpec,
    observer: RunObserver, cancel: CancelToken,
) -> torch.Tensor:
    """One batch from pure noise (x = noise * sigma_max)."""
    rng = make_image_rng(model, job, batch)
    sigmas = family.sigmas(model, job, plan).to(model.device)
    x = rng.first() * sigmas[0]
    return sample(family.make_denoiser(model, job, batch, cancel, None), plan, x, sigmas, job, observer, rng)


def from_latents(
    family: FlowFamily, model: LoadedModel, job: GenerationJob, plan: SamplerPlan, batch: BatchSpec,
    init: torch.Tensor, strength: float, fix_steps: bool, observer: RunObserver, cancel: CancelToken,
    blend: Any = None, noise_multiplier: float = 1.0,
) -> torch.Tensor:
    """img2img on the flow schedule: the tail from A1111's start step, x = s*noise + (1-s)*init
    (`fix_steps`: A1111's img2img_fix_steps, always on for the hires pass)."""
    from webui_api.engine.img2img import img2img_steps

    steps = img2img_steps(job.sampling.steps, strength, fix_steps)
    if steps.steps <= 0:
        return init
    schedule_job = replace(job, sampling=replace(job.sampling, steps=max(steps.steps, 1)))
    rng = make_image_rng(model, job, batch)
    tail = family.sigmas(model, schedule_job, plan).to(model.device)[steps.start_index :]
    x = tail[0] * rng.first() * noise_multiplier + (1.0 - tail[0]) * init
    return sample(family.make_denoiser(model, job, batch, cancel, blend), plan, x, tail, job, observer, rng)


def run_txt2img(
    family: FlowFamily, model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken
) -> JobResult:
    """txt2img; with hires params, the second pass runs like img2img at the target size with
    the hires sampler and prompts (built-in and latent upscalers)."""
    from webui_api.engine.hires import second_pass_job, truncate, upscale

    plan = family.check_job(model, job)
    hires = job.hires
    auto_upcast = job.engine_options.auto_vae_precision
    images: list[GeneratedImage] = []
    with torch.inference_mode():
        for batch in job_batches(job, observer, cancel):
            latents = first_pass(family, model, job, plan, batch, observer, cancel)
            if hires is not None and not cancel.interrupted:
                observer.batch_finished(2 * batch.index)
                upscaled = truncate(upscale(model, hires, latents, auto_upcast), hires)
                second = second_pass_job(job, hires, upscaled)
                hr_batch = replace(batch, prompts=hires.prompts[job.batch_slice(batch.index)],
                                   negative_prompts=hires.negative_prompts[job.batch_slice(batch.index)])
                hr_plan = family.check_job(model, second)
                observer.batch_started(batch.index, job.n_iter)
                latents = from_latents(family, model, second, hr_plan, hr_batch, upscaled, hires.denoising_strength,
                                       True, observer, cancel)
            images += batch_images(batch, decode_latents(model, latents, auto_upcast))
            observer.batch_finished(2 * batch.index + 1 if hires is not None else batch.index)
    extras = family.infotext(model, job)
    if hires is not None:
        extras["Denoising strength"] = hires.denoising_strength  # as the SD path writes it (A1111, Forge)
        extras.update(hires_extras(hires.infotext, family.hires_infotext(model, hires)))
    return JobResult(images=images, interrupted=cancel.interrupted, extra_generation_params=extras)


_AFTER_FAMILY_HIRES_KEYS = ("Hires schedule type", "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler")


def hires_extras(common: Sequence[tuple[str, Any]], family_keys: Mapping[str, Any]) -> dict[str, Any]:
    """The hires infotext keys in Forge's order: the family's own (Forge's "Hires Distilled CFG
    Scale", set next to "Hires CFG Scale") after the hires sampler and prompts, before "Hires
    schedule type" and the size, steps and upscaler keys."""
    keys = list(common)
    cut = next((i for i, (key, _) in enumerate(keys) if key in _AFTER_FAMILY_HIRES_KEYS), len(keys))
    return dict([*keys[:cut], *family_keys.items(), *keys[cut:]])


def run_img2img(
    family: FlowFamily, model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken
) -> JobResult:
    """img2img and inpainting (mask blend) on the flow schedule's tail."""
    from webui_api.engine.img2img import check_img2img_job, infotext_extras, init_latents, inpaint_state, overlaid

    params = check_img2img_job(job)
    plan = family.check_job(model, job)
    auto_upcast = job.engine_options.auto_vae_precision
    images: list[GeneratedImage] = []
    with torch.inference_mode():
        init, inpaint = inpaint_state(model, job, params, init_latents(model, job, params))
        for batch in job_batches(job, observer, cancel):
            latents = from_latents(family, model, job, plan, batch, init, params.denoising_strength,
                                   params.fix_steps, observer, cancel, inpaint.blend, params.initial_noise_multiplier)
            if inpaint.blend is not None:
                latents = inpaint.blend(latents)
            images += batch_images(batch, overlaid(decode_latents(model, latents, auto_upcast), params, job))
            observer.batch_finished(batch.index)
    extras = {**infotext_extras(params), **family.infotext(model, job)}
    return JobResult(images=images, interrupted=cancel.interrupted, extra_generation_params=extras)

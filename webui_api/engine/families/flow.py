"""The generation loop that Flux and SD3 share: both are rectified-flow models sampled the same way.

Sigma runs from 1 to 0 and a batch starts from `noise * sigma_max`; img2img and the hires pass
start on the schedule's tail at A1111's start step with x = s*noise + (1-s)*init. What differs
between the families (job checks, sigma table, text conditioning, infotext) comes in a `FlowFamily`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from samplers import flow as flow_samplers
from samplers.registry import discards_penultimate_sigma, flow_form, sampler_call_kwargs
from webui_api.engine.denoiser import SamplingInterrupted
from webui_api.engine.latents import decode_latents, to_pil
from webui_api.engine.models import LoadedModel
from webui_api.engine.pipeline import (
    BatchSpec,
    SamplerPlan,
    batch_images,
    job_batches,
    make_image_rng,
    make_noise_sampler,
    sampler_eta,
)
from webui_api.jobs import GeneratedImage, GenerationJob, HiresParams, JobResult
from webui_api.progress import CancelToken, RunObserver


class FlowDenoiser(Protocol):
    """What `sample` needs of a flow model's denoiser (Flux's, SD3's)."""

    last_cond_x0: torch.Tensor | None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


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
    sigma_at: Callable[[LoadedModel, float], float]  # sigma at timestep fraction t in (0, 1]
    hires_infotext: Callable[[LoadedModel, HiresParams], dict[str, Any]] = no_hires_infotext


@dataclass(frozen=True)
class FlowRun:
    """What one sampling run needs besides the denoiser and the start: the schedule (its full
    form sizes the Brownian noise interval), step noise and the family's sigma near 1."""

    sigmas: torch.Tensor  # the part walked (the tail for img2img)
    full_schedule: torch.Tensor
    rng: Any
    top_sigma: float  # the family's sigma at timestep 1 - FIRST_STEP_OFFSET


def flow_schedule(family: FlowFamily, model: LoadedModel, job: GenerationJob, plan: SamplerPlan) -> torch.Tensor:
    """The family's schedule for the job, with the penultimate sigma discarded where A1111's
    get_sigmas (kept by Forge for every model) does: DPM2, DPM2 a, DPM++ 3M SDE, or every sampler
    with always_discard_next_to_last_sigma (one step more, then the second-to-last dropped)."""
    if not discards_penultimate_sigma(plan.sampler, job.engine_options.always_discard_next_to_last_sigma):
        return family.sigmas(model, job, plan)
    longer = replace(job, sampling=replace(job.sampling, steps=job.sampling.steps + 1))
    sigmas = family.sigmas(model, longer, plan)
    return torch.cat([sigmas[:-2], sigmas[-1:]])


def flow_run(
    family: FlowFamily, model: LoadedModel, sigmas: torch.Tensor, full_schedule: torch.Tensor, rng: Any
) -> FlowRun:
    """A FlowRun with the family's sigma at timestep 1 - FIRST_STEP_OFFSET (ComfyUI's
    percent_to_sigma(1e-4), where the half-log-SNR samplers start instead of sigma = 1)."""
    return FlowRun(sigmas, full_schedule, rng, family.sigma_at(model, 1.0 - flow_samplers.FIRST_STEP_OFFSET))


def sample(
    denoiser: FlowDenoiser, model: LoadedModel, plan: SamplerPlan, x: torch.Tensor, run: FlowRun,
    job: GenerationJob, batch: BatchSpec, observer: RunObserver,
) -> torch.Tensor:
    """Run the sampler's flow form (registry.flow_form) with A1111's arguments: eta from the
    request or eta_ancestral, s_noise / churn, step noise from the image RNG or, for the SDE
    samplers, a Brownian tree over the full schedule. The half-log-SNR samplers walk a schedule
    whose first sigma is moved just below 1, as ComfyUI does (x stays the pure noise)."""
    total = len(run.sigmas) - 1

    def callback(info: dict) -> None:
        observer.sampling_step(int(info["i"]), total, lambda: rough_preview(info["denoised"]))

    form = flow_form(plan.sampler)
    if form is None:  # check_flow_plan refuses these before sampling
        raise ValueError(f"sampler {plan.sampler.name!r} has no flow form")
    noise_sampler = make_noise_sampler(model, job, plan, batch, run.rng, run.full_schedule)
    params = job.sampling
    kwargs = sampler_call_kwargs(
        plan.sampler, run.sigmas, eta=sampler_eta(job, plan), s_churn=params.s_churn, s_tmin=params.s_tmin,
        s_tmax=params.s_tmax, s_noise=params.s_noise, noise_sampler=noise_sampler,
    )
    sigmas = run.sigmas
    if form.needs_sigma_below_one:
        sigmas = flow_samplers.first_sigma_below_one(sigmas, run.top_sigma)
    try:
        return form.function(denoiser, x, sigmas, extra_args={}, callback=callback, disable=True, **kwargs)
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
    sigmas = flow_schedule(family, model, job, plan).to(model.device)
    x = rng.first() * sigmas[0]
    run = flow_run(family, model, sigmas, sigmas, rng)
    return sample(family.make_denoiser(model, job, batch, cancel, None), model, plan, x, run, job, batch, observer)


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
    full_schedule = flow_schedule(family, model, schedule_job, plan).to(model.device)
    tail = full_schedule[steps.start_index :]
    x = tail[0] * rng.first() * noise_multiplier + (1.0 - tail[0]) * init
    run = flow_run(family, model, tail, full_schedule, rng)
    return sample(family.make_denoiser(model, job, batch, cancel, blend), model, plan, x, run, job, batch, observer)


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
        extras.update(dict(hires.infotext))
        extras.update(family.hires_infotext(model, hires))
    return JobResult(images=images, interrupted=cancel.interrupted, extra_generation_params=extras)


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

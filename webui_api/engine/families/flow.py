"""The generation loop that Flux and SD3 share: both are rectified-flow models sampled the same way.

Sigma runs from 1 to 0 and a batch starts from `noise * sigma_max`; img2img and the hires pass
start on the schedule's tail at A1111's start step with x = s*noise + (1-s)*init. What differs
between the families (job checks, sigma table, text conditioning, infotext) comes in a `FlowFamily`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import PurePath
from typing import Any, Protocol

import torch

from samplers import flow as flow_samplers
from samplers.registry import discards_penultimate_sigma, flow_call_kwargs, flow_form
from samplers.unipc import UniPCOptions
from webui_api.engine.denoiser import SamplingInterrupted
from webui_api.engine.latents import decode_latents, to_pil
from webui_api.engine.models import LoadedModel
from webui_api.engine.networks import parse_prompt_networks
from webui_api.engine.pipeline import (
    BatchSpec,
    SamplerPlan,
    batch_images,
    job_batches,
    make_image_rng,
    make_noise_sampler,
    sampler_eta,
    unipc_options,
)
from webui_api.engine.previews import PreviewSource, SideStreams
from webui_api.engine.prompts import ScheduledText, prompt_schedule, split_subprompts
from webui_api.errors import BadRequest
from webui_api.jobs import GeneratedImage, GenerationJob, HiresParams, JobResult
from webui_api.progress import CancelToken, RunObserver


class FlowDenoiser(Protocol):
    """What `sample` needs of a flow model's denoiser (Flux's, SD3's)."""

    last_cond_x0: torch.Tensor | None
    last_uncond_x0: torch.Tensor | None  # the last call's unconditional x0 (DDIM CFG++ steps along it)
    cfg_scale: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


def module_infotext(model: LoadedModel, job: GenerationJob) -> dict[str, Any]:
    """Forge's "Module 1..n": each forge_additional_modules entry of the job, in its order, as
    `splitext(basename(name))[0]` (Forge's processing.py). A job that named none gets the files
    the model was built with (found in models/VAE and models/text_encoder; Forge would have
    refused such a job), so the infotext still says which files made the image."""
    names = job.engine_options.forge_additional_modules or model.module_files
    stems = [PurePath(str(name).replace("\\", "/")).stem for name in names]
    return {f"Module {index}": stem for index, stem in enumerate(stems, start=1)}


# ---------------------------------------------------------------------------
# Prompt editing per step
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFrame:
    """The steps prompt schedules are laid out on: A1111's total_steps of the first pass (twice
    the steps for second-order samplers) and, for the hires pass, the hires pass's total."""

    steps: int
    hires_steps: int | None = None

    @classmethod
    def for_pass(cls, job: GenerationJob, plan: SamplerPlan) -> PromptFrame:
        return cls(plan.sampler.total_steps(job.sampling.steps))

    def hires(self, second: GenerationJob, hr_plan: SamplerPlan) -> PromptFrame:
        return replace(self, hires_steps=hr_plan.sampler.total_steps(second.sampling.steps))


def prompt_texts(prompt: str, frame: PromptFrame, use_old_scheduling: bool = False) -> tuple[ScheduledText, ...]:
    """A prompt's texts over the denoiser calls, as A1111 schedules them ([a:b:N], [a|b], ...);
    the flow models take no composable guidance, so AND parts are joined with spaces (Forge's Flux
    path concatenates them) at every step. Extra-network tags are removed (hires prompts keep them
    in the job)."""
    text = parse_prompt_networks(prompt)[0]
    parts = [prompt_schedule(part.text, frame.steps, frame.hires_steps, use_old_scheduling)
             for part in split_subprompts(text)]
    ends = sorted({entry.end_at_step for schedule in parts for entry in schedule})
    return tuple(ScheduledText(end, " ".join(_text_at(schedule, end) for schedule in parts)) for end in ends)


def _text_at(schedule: tuple[ScheduledText, ...], step: int) -> str:
    return next((entry.text for entry in schedule if step <= entry.end_at_step), schedule[0].text)


def rows_of(cond: Any, rows: Sequence[int]) -> Any:
    """A family's conditioning (a dataclass of batch-first tensors) restricted to `rows`, in order."""
    index = torch.tensor(list(rows), dtype=torch.long)
    return type(cond)(**{f.name: getattr(cond, f.name)[index.to(getattr(cond, f.name).device)]
                         for f in fields(cond)})


@dataclass
class ScheduledConds:
    """One batch's prompts over the denoiser calls: every distinct scheduled text encoded once
    (`variants`, one row per text), and per prompt the (end_at_step, row) pairs it goes through.
    `at(step)` picks each prompt's row as A1111's reconstruct_cond_batch does (the first entry
    whose end_at_step >= step) and reuses the stacked result while the rows stay the same."""

    variants: Any
    schedules: tuple[tuple[tuple[int, int], ...], ...]
    _last: tuple[tuple[int, ...], Any] | None = None

    @classmethod
    def fixed(cls, cond: Any, batch: int) -> ScheduledConds:
        """A conditioning used at every step (`cond` has one row per prompt)."""
        return cls(cond, tuple(((0, row),) for row in range(batch)))

    def at(self, step: int) -> Any:
        rows = tuple(next((row for end, row in schedule if step <= end), schedule[0][1]) for schedule in self.schedules)
        if self._last is None or self._last[0] != rows:
            same = rows == tuple(range(len(rows))) and len(rows) == self._row_count()
            self._last = (rows, self.variants if same else rows_of(self.variants, rows))
        return self._last[1]

    def _row_count(self) -> int:
        return int(getattr(self.variants, fields(self.variants)[0].name).shape[0])


class GuidedVelocity(Protocol):
    """A flow denoiser's parts that `guided_x0` uses."""

    cond: ScheduledConds
    uncond: ScheduledConds | None
    cfg_scale: float
    cancel: CancelToken
    blend: Callable[[torch.Tensor], torch.Tensor] | None
    last_cond_x0: torch.Tensor | None
    last_uncond_x0: torch.Tensor | None
    step: int

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor: ...


def guided_x0(denoiser: GuidedVelocity, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """One denoiser call: x0 = x - sigma * v with this call's scheduled conditioning, real CFG
    when there is an uncond, then the inpaint blend; counts the call (A1111's step counter).
    Keeps the conditional and unconditional x0 (the conditional one again without CFG)."""
    if denoiser.cancel.should_stop_sampling:
        raise SamplingInterrupted("interrupted" if denoiser.cancel.interrupted else "skipped")
    step = denoiser.step
    s = sigma.reshape(-1, 1, 1, 1).float()
    denoised = x - s * denoiser.velocity(x, sigma, denoiser.cond.at(step))
    denoiser.last_cond_x0 = denoised
    denoiser.last_uncond_x0 = denoised
    if denoiser.uncond is not None:
        uncond = x - s * denoiser.velocity(x, sigma, denoiser.uncond.at(step))
        denoiser.last_uncond_x0 = uncond
        denoised = uncond + denoiser.cfg_scale * (denoised - uncond)
    denoiser.step = step + 1
    return denoised if denoiser.blend is None else denoiser.blend(denoised)


TextEncoder = Callable[[LoadedModel, Sequence[str], GenerationJob], Any]  # a family's encode_texts


def scheduled_prompts(
    model: LoadedModel, prompts: Sequence[str], job: GenerationJob, frame: PromptFrame, encode: TextEncoder
) -> ScheduledConds:
    """Schedule every prompt of a batch and encode each distinct text once, in one call."""
    schedules = [prompt_texts(prompt, frame, job.engine_options.use_old_scheduling) for prompt in prompts]
    distinct = list(dict.fromkeys(entry.text for schedule in schedules for entry in schedule))
    index = {text: row for row, text in enumerate(distinct)}
    rows = tuple(tuple((entry.end_at_step, index[entry.text]) for entry in schedule) for schedule in schedules)
    return ScheduledConds(encode(model, distinct, job), rows)


def first_call_texts(prompts: Sequence[str], steps: int) -> list[str]:
    """Each prompt's text at the first denoiser call (editing resolved, AND parts joined)."""
    return [prompt_texts(prompt, PromptFrame(steps))[0].text for prompt in prompts]


def no_hires_infotext(model: LoadedModel, hires: HiresParams) -> dict[str, Any]:
    """A family with nothing of its own to add to the hires pass's infotext."""
    return {}


@dataclass(frozen=True)
class FlowFamily:
    """The parts of a flow family that the shared loop calls (one instance per family)."""

    check_job: Callable[[LoadedModel, GenerationJob], SamplerPlan]
    sigmas: Callable[[LoadedModel, GenerationJob, SamplerPlan], torch.Tensor]  # CPU float32, ending in 0
    make_denoiser: Callable[[LoadedModel, GenerationJob, BatchSpec, CancelToken, Any, PromptFrame], FlowDenoiser]
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
    bottom_sigma: float  # the family's sigma at timestep FIRST_STEP_OFFSET: where DPM fast / adaptive stop


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
    percent_to_sigma(1e-4), where the half-log-SNR samplers start instead of sigma = 1) and at
    FIRST_STEP_OFFSET (the smallest of the model's table, where DPM fast / adaptive stop, as
    A1111 hands them the SD model's sigma_min: they return x there, with no last denoise)."""
    offset = flow_samplers.FIRST_STEP_OFFSET
    return FlowRun(sigmas, full_schedule, rng, family.sigma_at(model, 1.0 - offset), family.sigma_at(model, offset))


def sample(
    denoiser: FlowDenoiser, model: LoadedModel, plan: SamplerPlan, x: torch.Tensor, run: FlowRun,
    job: GenerationJob, batch: BatchSpec, observer: RunObserver,
) -> torch.Tensor:
    """Run the sampler's flow form (registry.flow_form) with A1111's arguments: eta from the
    request or eta_ancestral, s_noise / churn, step noise from the image RNG or, for the SDE
    samplers, a Brownian tree over the full schedule. The half-log-SNR samplers walk a schedule
    whose first sigma is moved just below 1, as ComfyUI does (x stays the pure noise)."""
    total = len(run.sigmas) - 1
    side_streams = SideStreams()

    def callback(info: dict) -> None:
        denoised = info["denoised"]
        preview = PreviewSource(lambda latent, _upcast: rough_preview(latent), lambda: denoised, side_streams)
        observer.sampling_step(int(info["i"]), total, preview)

    form = flow_form(plan.sampler)
    if form is None:  # check_flow_plan refuses these before sampling
        raise ValueError(f"sampler {plan.sampler.name!r} has no flow form")
    noise_sampler = make_noise_sampler(model, job, plan, batch, run.rng, run.full_schedule)
    params = job.sampling
    sigmas = run.sigmas
    if form.guidance_factor != 1.0:  # DDIM CFG++: guidance at A1111's cfg_scale / 12.5 (this batch's denoiser)
        denoiser.cfg_scale = denoiser.cfg_scale * form.guidance_factor
    if form.needs_sigma_below_one:
        sigmas = flow_samplers.first_sigma_below_one(sigmas, run.top_sigma)
    unipc = flow_unipc_options(job, plan, len(sigmas) - 1)
    kwargs = flow_call_kwargs(
        plan.sampler, sigmas, eta=sampler_eta(job, plan), s_churn=params.s_churn, s_tmin=params.s_tmin,
        s_tmax=params.s_tmax, s_noise=params.s_noise, noise_sampler=noise_sampler, unipc_options=unipc,
        end_sigma=run.bottom_sigma,
    )
    try:
        return form.function(denoiser, x, sigmas, extra_args={}, callback=callback, disable=True, **kwargs)
    except SamplingInterrupted:
        return x if denoiser.last_cond_x0 is None else denoiser.last_cond_x0


def flow_unipc_options(job: GenerationJob, plan: SamplerPlan, steps: int) -> UniPCOptions | None:
    """UniPC's uni_pc_* options for a flow run of `steps` steps (None for other samplers); like
    A1111, UniPC cannot walk fewer steps than its order (a 400 naming the option)."""
    if not plan.sampler.takes_unipc_options:
        return None
    options = unipc_options(job)
    if steps < options.order:
        raise BadRequest(
            f"UniPC order must be < sampling steps: order {options.order}, {steps} steps"
            " (raise steps or denoising_strength, or lower the uni_pc_order option)"
        )
    return options


def rough_preview(latents: torch.Tensor) -> Any:
    """A cheap live preview: the 16 latent channels averaged in three groups (no calibrated
    coefficients for the flow models' latent spaces yet)."""
    latent = latents[0].float()
    groups = torch.stack([latent[0:5].mean(0), latent[5:11].mean(0), latent[11:16].mean(0)])
    return to_pil(groups.clamp(-1, 1))


def encoded_denoiser(
    family: FlowFamily, model: LoadedModel, job: GenerationJob, batch: BatchSpec, cancel: CancelToken,
    blend: Any, frame: PromptFrame,
) -> FlowDenoiser:
    """The family's denoiser, its prompts encoded with the text encoders on the device; after
    encoding they are parked in CPU RAM where the model's TextEncoderParking decides (they are
    not needed again until the next encode, and sampling and decoding may need their room)."""
    parking = model.text_encoder_parking
    if parking is not None:
        parking.before_encode(model)
    denoiser = family.make_denoiser(model, job, batch, cancel, blend, frame)
    if parking is not None:
        parking.after_encode(model)
    return denoiser


def first_pass(
    family: FlowFamily, model: LoadedModel, job: GenerationJob, plan: SamplerPlan, batch: BatchSpec,
    observer: RunObserver, cancel: CancelToken,
) -> torch.Tensor:
    """One batch from pure noise (x = noise * sigma_max)."""
    rng = make_image_rng(model, job, batch)
    sigmas = flow_schedule(family, model, job, plan).to(model.device)
    x = rng.first() * sigmas[0]
    run = flow_run(family, model, sigmas, sigmas, rng)
    denoiser = encoded_denoiser(family, model, job, batch, cancel, None, PromptFrame.for_pass(job, plan))
    return sample(denoiser, model, plan, x, run, job, batch, observer)


def from_latents(
    family: FlowFamily, model: LoadedModel, job: GenerationJob, plan: SamplerPlan, batch: BatchSpec,
    init: torch.Tensor, strength: float, fix_steps: bool, observer: RunObserver, cancel: CancelToken,
    blend: Any = None, noise_multiplier: float = 1.0, frame: PromptFrame | None = None,
) -> torch.Tensor:
    """img2img on the flow schedule: the tail from A1111's start step, x = s*noise + (1-s)*init
    (`fix_steps`: A1111's img2img_fix_steps, always on for the hires pass). Prompt schedules are
    laid out on `frame` (default: the job's own steps) and counted from the tail's first call."""
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
    denoiser = encoded_denoiser(family, model, job, batch, cancel, blend, frame or PromptFrame.for_pass(job, plan))
    return sample(denoiser, model, plan, x, run, job, batch, observer)


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
                frame = PromptFrame.for_pass(job, plan).hires(second, hr_plan)
                latents = from_latents(family, model, second, hr_plan, hr_batch, upscaled, hires.denoising_strength,
                                       True, observer, cancel, frame=frame)
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

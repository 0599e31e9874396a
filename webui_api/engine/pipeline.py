"""txt2img as A1111 runs it: per batch, conditioning -> noise -> sigmas -> sampler -> decode.

`run_txt2img` is the orchestration (flat numbered steps); each step is a small helper.
Progress and cancellation travel through the observer and the cancel token passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from samplers.brownian import BrownianTreeNoise, schedule_interval
from samplers.registry import (
    KIND_TIMESTEPS,
    SamplerInfo,
    SchedulerInfo,
    compute_sigmas,
    compute_timesteps,
    sampler_call_kwargs,
)
from samplers.unipc import UniPCOptions
from webui_api.engine.cond_types import BatchConditioning
from webui_api.engine.conditioning import build_batch_conditioning
from webui_api.engine.control import control_hook
from webui_api.engine.denoiser import (
    CFGDenoiser,
    GuidanceOptions,
    InpaintBlend,
    PaddingRecord,
    SamplingInterrupted,
    make_inner,
)
from webui_api.engine.latents import decode_latents
from webui_api.engine.models import LoadedModel
from webui_api.engine.previews import PreviewSource, SideStreams, preview_kind
from webui_api.engine.rng import ImageRNG, philox_normal
from webui_api.engine.token_merging import token_merging
from webui_api.errors import BadRequest
from webui_api.jobs import GeneratedImage, GenerationJob, JobResult
from webui_api.progress import CancelToken, RunObserver

LATENT_SCALE = 8  # pixels per latent cell for SD1/SD2/SDXL VAEs


@dataclass(frozen=True)
class SamplerPlan:
    """The sampler and scheduler a job resolved to."""

    sampler: SamplerInfo
    scheduler: SchedulerInfo


@dataclass(frozen=True)
class BatchSpec:
    """Batch n's slice of the job: its prompts, negatives, seeds and subseeds."""

    index: int
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]

    @classmethod
    def of(cls, job: GenerationJob, index: int) -> BatchSpec:
        part = job.batch_slice(index)
        return cls(
            index=index,
            prompts=job.prompts[part],
            negative_prompts=job.negative_prompts[part],
            seeds=job.seeds.seeds[part],
            subseeds=job.seeds.subseeds[part],
        )


def job_batches(job: GenerationJob, observer: RunObserver, cancel: CancelToken) -> Iterator[BatchSpec]:
    """The job's n_iter batches in A1111's loop order: an interrupt stops before the next batch,
    a skip only ever ends the current one, and each batch is announced to the observer."""
    for n in range(job.n_iter):
        if cancel.interrupted:
            return
        cancel.clear_skip()
        observer.batch_started(n, job.n_iter)
        yield BatchSpec.of(job, n)


@dataclass(frozen=True)
class SamplingStart:
    """Where sampling begins: the schedule the sampler walks and the latent it starts from.

    txt2img walks the full schedule from pure noise; img2img a tail of it from the noised
    init latent, and then DPM fast/adaptive take their interval from that tail, not from
    the model's sigma table (`model_interval` False)."""

    schedule: torch.Tensor
    x: torch.Tensor
    model_interval: bool = True
    blend: InpaintBlend | None = None  # inpainting: keep the init latent outside the mask
    image_cond: torch.Tensor | None = None  # 9-channel inpainting UNets: [mask, masked image latent]
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. UniPC's img2img t_start


# (the batch's first noise draw, the full schedule) -> where sampling starts
StartFn = Callable[[torch.Tensor, torch.Tensor], SamplingStart]


@dataclass(frozen=True)
class SamplingHooks:
    """What a caller adds to one batch's sampling without copying `sample_batch`.

    `conditioning(model, batch)` replaces the default encoding (the hires pass lays prompt
    schedules over its own steps); `wrap_denoiser(cfg, batch, start)` returns what the sampler
    calls instead of the CFG denoiser (the refiner switch, webui_api.engine.refiner)."""

    conditioning: Callable[[LoadedModel, BatchSpec], BatchConditioning] | None = None
    wrap_denoiser: Callable[[CFGDenoiser, BatchSpec, SamplingStart], Callable] | None = None


@dataclass
class SamplingTrace:
    """The latest x0 estimate the sampler reported (the "Combined" live preview).

    It starts as the initial latent, as A1111's `last_latent` does; an interrupted batch
    decodes the denoiser's last prompt-only x0 instead, once there is one (A1111's last_latent)."""

    x0: torch.Tensor


# ---------------------------------------------------------------------------
# Job checks and resolution
# ---------------------------------------------------------------------------


def check_job(job: GenerationJob) -> None:
    """Loud errors for a job the engine cannot run as given."""
    if job.kind not in ("txt2img", "img2img"):
        raise BadRequest(f"the pipeline got a job of kind {job.kind!r}; expected 'txt2img' or 'img2img'")
    counts = {
        "prompts": len(job.prompts),
        "negative_prompts": len(job.negative_prompts),
        "seeds": len(job.seeds.seeds),
        "subseeds": len(job.seeds.subseeds),
    }
    wrong = {k: v for k, v in counts.items() if v != job.image_count}
    if wrong:
        raise BadRequest(f"job lists must have batch_size * n_iter = {job.image_count} entries, got {wrong}")
    if job.width < LATENT_SCALE or job.height < LATENT_SCALE:
        raise BadRequest(f"width and height must be at least {LATENT_SCALE}, got {job.width}x{job.height}")
    if job.sampling.steps < 1:
        raise BadRequest(f"steps must be at least 1, got {job.sampling.steps}")


def resolve_plan(job: GenerationJob) -> SamplerPlan:
    """The job's sampler and scheduler entries (resolved by the job builder); the sampler must
    be runnable."""
    sampler, scheduler = job.sampling.sampler, job.sampling.schedule
    if sampler.function is None:
        raise BadRequest(f"sampler {sampler.name!r} is not implemented yet")
    plan = SamplerPlan(sampler=sampler, scheduler=scheduler)
    if sampler.takes_unipc_options:
        check_unipc_steps(job, plan)
    return plan


def unipc_options(job: GenerationJob) -> UniPCOptions:
    """A1111's uni_pc_* options for this job (defaults bh1, time_uniform, order 3, lower order final)."""
    options = job.engine_options
    try:
        return UniPCOptions(
            variant=options.uni_pc_variant,
            skip_type=options.uni_pc_skip_type,
            order=options.uni_pc_order,
            lower_order_final=options.uni_pc_lower_order_final,
        )
    except ValueError as err:
        raise BadRequest(str(err)) from err


def check_unipc_steps(job: GenerationJob, plan: SamplerPlan) -> None:
    """UniPC runs one step per DDIM timestep and cannot have fewer steps than its order."""
    order = unipc_options(job).order
    count = len(
        compute_timesteps(plan.sampler, job.sampling.steps, job.engine_options.always_discard_next_to_last_sigma)
    )
    if count < order:
        raise BadRequest(f"UniPC order must be < sampling steps: order {order}, {count} steps (uni_pc_order option)")


# ---------------------------------------------------------------------------
# One batch
# ---------------------------------------------------------------------------


def make_image_rng(model: LoadedModel, job: GenerationJob, batch: BatchSpec) -> ImageRNG:
    """The batch's ImageRNG with per-image shape (C, H/8, W/8)."""
    shape = (model.latent_channels, job.height // LATENT_SCALE, job.width // LATENT_SCALE)
    seeds = job.seeds
    return ImageRNG(
        shape,
        batch.seeds,
        subseeds=batch.subseeds,
        subseed_strength=seeds.subseed_strength,
        seed_resize_from_h=seeds.seed_resize_from_h,
        seed_resize_from_w=seeds.seed_resize_from_w,
        ensd=seeds.eta_noise_seed_delta,
        source=seeds.randn_source,
        device=model.device,
    )


def make_sigmas(model: LoadedModel, job: GenerationJob, plan: SamplerPlan, inner: Any) -> torch.Tensor:
    """The schedule, computed on CPU with the job's sigma options, moved to the model device.

    ``inner`` supplies the sigma table (LCM's wrapper has its own 50-entry table)."""
    options = job.engine_options
    sigmas = compute_sigmas(
        plan.sampler,
        plan.scheduler,
        job.sampling.steps,
        inner.sigmas,
        sigma_min=options.sigma_min,
        sigma_max=options.sigma_max,
        rho=options.rho,
        always_discard_next_to_last_sigma=options.always_discard_next_to_last_sigma,
        is_sdxl=model.family == "sdxl",
        beta_alpha=options.beta_dist_alpha,
        beta_beta=options.beta_dist_beta,
    )
    return sigmas.to(model.device)


def make_schedule(model: LoadedModel, job: GenerationJob, plan: SamplerPlan, inner: Any) -> torch.Tensor:
    """What the sampler walks: sigmas, or DDIM timesteps for the timestep samplers."""
    if plan.sampler.kind == KIND_TIMESTEPS:
        return compute_timesteps(
            plan.sampler, job.sampling.steps, job.engine_options.always_discard_next_to_last_sigma
        ).to(model.device)
    return make_sigmas(model, job, plan, inner)


def initial_latent(job: GenerationJob, plan: SamplerPlan, noise: torch.Tensor, schedule: torch.Tensor) -> torch.Tensor:
    """x = noise * sigma_0 (or * sqrt(1 + sigma_0^2) with the SGM noise multiplier option);
    timestep samplers start from the unit noise itself."""
    if plan.sampler.kind == KIND_TIMESTEPS:
        return noise
    if job.engine_options.sgm_noise_multiplier:
        return noise * torch.sqrt(1.0 + schedule[0] ** 2)
    return noise * schedule[0]


def sampler_eta(job: GenerationJob, plan: SamplerPlan) -> float | None:
    """The request's eta, else A1111's option (eta_ddim for DDIM-family samplers, else
    eta_ancestral), else None: the sampler's own default."""
    if job.sampling.eta is not None or not plan.sampler.takes_eta:
        return job.sampling.eta
    options = job.engine_options
    return options.eta_ddim if plan.sampler.eta_option == "eta_ddim" else options.eta_ancestral


def make_noise_sampler(
    model: LoadedModel, job: GenerationJob, plan: SamplerPlan, batch: BatchSpec, rng: ImageRNG, schedule: torch.Tensor
) -> Callable[[Any, Any], torch.Tensor]:
    """Where a sampler's step noise comes from.

    Samplers with the ``brownian_noise`` option get a Brownian tree per image seeded with the
    batch's main seeds over the full schedule's (smallest positive, largest) sigma: no
    subseeds, no ENSD. Its node normals come from a CPU generator for the "CPU" RNG source,
    from A1111's Philox port for "NV" (as A1111 replaces torchsde's draw) and from one on the
    model device for "GPU". Every other sampler draws the ImageRNG's next per-image noise
    (A1111's TorchHijack).
    """
    if not plan.sampler.brownian_noise:
        return lambda sigma, sigma_next: rng.next()
    shape = (model.latent_channels, job.height // LATENT_SCALE, job.width // LATENT_SCALE)
    sigma_min, sigma_max = schedule_interval(schedule.detach().cpu())
    tree_device = torch.device("cpu") if job.seeds.randn_source == "CPU" else model.device
    normal = philox_normal if job.seeds.randn_source == "NV" else None
    if job.engine_options.no_dpmpp_sde_batch_determinism:
        return unbatched_brownian_noise((len(batch.seeds),) + shape, sigma_min, sigma_max, batch, model.device, normal)
    return BrownianTreeNoise(shape, sigma_min, sigma_max, batch.seeds, device=model.device, tree_device=tree_device,
                             normal=normal)


def unbatched_brownian_noise(shape, sigma_min, sigma_max, batch: BatchSpec, device, normal=None) -> BrownianTreeNoise:
    """A1111 with no_dpmpp_sde_batch_determinism: k-diffusion's own single tree over the whole
    batch, seeded by torch.randint from the global RNG, which A1111's first noise draw left
    seeded with the batch's last seed. A local generator seeded the same way gives that seed
    without touching the global RNG."""
    generator = torch.Generator().manual_seed(int(batch.seeds[-1]))
    seed = int(torch.randint(0, 2**63 - 1, [], generator=generator).item())
    return BrownianTreeNoise(shape, sigma_min, sigma_max, [seed], device=device, tree_device=device, batched=False,
                             normal=normal)


def sampler_kwargs(
    job: GenerationJob,
    plan: SamplerPlan,
    schedule: torch.Tensor,
    inner: Any,
    noise_sampler: Callable,
    model_interval: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for the sampler function (see registry.sampler_call_kwargs)."""
    params = job.sampling
    interval = {} if plan.sampler.kind == KIND_TIMESTEPS or not model_interval else {
        "model_sigma_min": inner.sigma_min, "model_sigma_max": inner.sigma_max}
    return sampler_call_kwargs(
        plan.sampler,
        schedule,
        eta=sampler_eta(job, plan),
        s_churn=params.s_churn,
        s_tmin=params.s_tmin,
        s_tmax=params.s_tmax,
        s_noise=params.s_noise,
        noise_sampler=noise_sampler,
        alphas_cumprod=getattr(inner, "alphas_cumprod", None),
        unipc_options=unipc_options(job) if plan.sampler.takes_unipc_options else None,
        **interval,
    )


def guidance_options(job: GenerationJob, plan: SamplerPlan, model: LoadedModel | None = None) -> GuidanceOptions:
    """skip_early_cond / s_min_uncond_all from the options; total_steps doubled for second-order
    samplers (A1111's SamplerData.total_steps); timestep samplers blend masks before denoising.
    pad_cond_uncond / pad_cond_uncond_v0 / batch_cond_uncond as A1111's options (`model`
    encodes the empty prompt pad_cond_uncond pads with)."""
    options = job.engine_options
    pad, pad_v0 = options.pad_cond_uncond, options.pad_cond_uncond_v0
    empty = None
    if pad and not pad_v0 and model is not None:
        from webui_api.engine.conditioning import empty_prompt_crossattn

        empty = empty_prompt_crossattn(model, options, job.clip_skip)
    return GuidanceOptions(
        total_steps=plan.sampler.total_steps(job.sampling.steps),
        skip_early_cond=options.skip_early_cond,
        s_min_uncond_all=options.s_min_uncond_all,
        mask_before_denoising=plan.sampler.kind == KIND_TIMESTEPS,
        image_cfg_scale=job.img2img.image_cfg_scale if job.img2img is not None else None,
        pad_cond_uncond=pad and empty is not None,
        pad_cond_uncond_v0=pad_v0,
        batch_cond_uncond=options.batch_cond_uncond,
        empty_crossattn=empty,
    )


def preview_source(job: GenerationJob, cfg: CFGDenoiser, trace: SamplingTrace) -> Callable[[], torch.Tensor]:
    """What a live preview shows (A1111 option live_preview_content, default "Prompt")."""
    content = job.engine_options.live_preview_content

    def latest() -> torch.Tensor:
        if cfg.last is None or content == "Combined":
            return trace.x0
        if content == "Negative prompt" and cfg.last.uncond_denoised is not None:
            return cfg.last.uncond_denoised
        return cfg.last.cond_denoised

    return latest


def make_callback(
    job: GenerationJob, observer: RunObserver, trace: SamplingTrace, latest: Callable[[], torch.Tensor],
    model: LoadedModel,
) -> Callable[[dict], None]:
    """The sampler callback: remember the x0 estimate, report the step with a lazy preview
    of the kind the option show_progress_type names (made only when a preview is due, and
    decoded off the sampling thread by observers that `capture()` it)."""
    total = job.sampling.steps
    preview = PreviewSource.of_model(model, preview_kind(job.engine_options, model), latest, SideStreams())

    def callback(info: dict) -> None:
        trace.x0 = info["denoised"]
        observer.sampling_step(int(info["i"]), total, preview)

    return callback


# ---------------------------------------------------------------------------
# Conditioning
# ---------------------------------------------------------------------------


def total_steps(job: GenerationJob, plan: SamplerPlan) -> int:
    """A1111's total_steps: the denoiser-call count prompt schedules are laid out on
    (twice the steps for second-order samplers)."""
    return plan.sampler.total_steps(job.sampling.steps)


def batch_conditioning(
    model: LoadedModel, job: GenerationJob, plan: SamplerPlan, batch: BatchSpec
) -> BatchConditioning:
    """A1111's setup_conds for one batch: AND parts, prompt-editing schedules, encoding."""
    return build_batch_conditioning(
        model,
        batch.prompts,
        batch.negative_prompts,
        total_steps(job, plan),
        job.clip_skip,
        job.engine_options,
        width=job.width,
        height=job.height,
        embeddings=model.embeddings,
    )


def sample_batch(
    model: LoadedModel,
    job: GenerationJob,
    plan: SamplerPlan,
    batch: BatchSpec,
    observer: RunObserver,
    cancel: CancelToken,
    start: StartFn | None = None,
    hooks: SamplingHooks | None = None,
    padding: PaddingRecord | None = None,
    is_hires: bool = False,
) -> torch.Tensor:
    """Run the sampler for one batch and return its final latents (or, when interrupted or
    skipped, the last x0 estimate). `start` turns the first noise draw and the full
    schedule into the starting point (None: txt2img's pure noise); `hooks` see SamplingHooks;
    `padding` collects the cond/uncond padding of the run's last denoiser call (infotext).
    The model's UNet merges tokens (ToMe) at the pass's ratio while the sampler runs
    (`is_hires`: the hires fix's second pass, which has its own ratio)."""
    hooks = hooks or SamplingHooks()
    # 1. conditioning for prompts and negative prompts (schedules, AND parts)
    if hooks.conditioning is not None:
        conditioning = hooks.conditioning(model, batch)
    else:
        conditioning = batch_conditioning(model, job, plan, batch)
    # 2. model wrapper, noise and schedule
    inner = make_inner(model, plan.sampler.kind)
    rng = make_image_rng(model, job, batch)
    full_schedule = make_schedule(model, job, plan, inner)
    noise = rng.first()
    if start is None:
        begin = SamplingStart(full_schedule, initial_latent(job, plan, noise, full_schedule))
    else:
        begin = start(noise, full_schedule)
    x, schedule = begin.x, begin.schedule
    # 3. denoiser, callback, sampler arguments
    cfg = CFGDenoiser(inner, cancel, guidance_options(job, plan, model), blend=begin.blend)
    denoiser = cfg if hooks.wrap_denoiser is None else hooks.wrap_denoiser(cfg, batch, begin)
    trace = SamplingTrace(x0=x)
    callback = make_callback(job, observer, trace, preview_source(job, cfg, trace), model)
    control = control_hook(job, schedule, plan.sampler.kind == KIND_TIMESTEPS)  # ControlNet units, if any
    if control is not None:
        inner.unet.control, callback = control, control.track(callback)
    noise_sampler = make_noise_sampler(model, job, plan, batch, rng, full_schedule)
    kwargs = {**sampler_kwargs(job, plan, schedule, inner, noise_sampler, begin.model_interval), **begin.sampler_kwargs}
    extra_args = {"cond": conditioning, "cond_scale": job.sampling.cfg_scale, "s_min_uncond": job.sampling.s_min_uncond}
    if begin.image_cond is not None:
        extra_args["image_cond"] = begin.image_cond
    # 4. sample; an interrupt or skip keeps the last x0 estimate of the prompt (A1111's last_latent)
    function = plan.sampler.function
    if function is None:  # resolve_sampler refuses unimplemented samplers before a job is built
        raise ValueError(f"sampler {plan.sampler.name!r} is not implemented")
    merging = job.engine_options.token_merging_for(job.kind, is_hires)
    try:
        with token_merging(model.unet, merging):
            return function(
                denoiser, x, schedule, extra_args=extra_args, callback=callback, disable=True, **kwargs
            )
    except SamplingInterrupted:
        return trace.x0 if cfg.last is None else cfg.last.cond_denoised
    finally:  # A1111 adds the keys after the sampler returns, interrupted or not
        if padding is not None:
            padding.note(cfg)


def batch_images(batch: BatchSpec, pictures: list) -> list[GeneratedImage]:
    """Pair decoded pictures with their seeds and prompts, in batch order."""
    return [
        GeneratedImage(
            image=picture,
            seed=batch.seeds[i],
            subseed=batch.subseeds[i],
            prompt=batch.prompts[i],
            negative_prompt=batch.negative_prompts[i],
        )
        for i, picture in enumerate(pictures)
    ]


# ---------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------


def run_txt2img(model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken) -> JobResult:
    """Generate every image of a txt2img job, batch by batch, in A1111's order.

    An interrupt stops before the next batch (the running one still decodes its last x0
    estimate); a skip ends only the running batch.
    """
    check_job(job)
    plan = resolve_plan(job)
    padding = PaddingRecord()
    images: list[GeneratedImage] = []
    with torch.inference_mode():
        for batch in job_batches(job, observer, cancel):
            latents = sample_batch(model, job, plan, batch, observer, cancel, padding=padding)
            auto_upcast = job.engine_options.auto_vae_precision
            images += batch_images(batch, decode_latents(model, latents, auto_upcast))
            observer.batch_finished(batch.index)
    return JobResult(images=images, interrupted=cancel.interrupted, cond_padding=padding.infotext())

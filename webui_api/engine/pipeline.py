"""txt2img as A1111 runs it: per batch, conditioning -> noise -> sigmas -> sampler -> decode.

`run_txt2img` is the orchestration (flat numbered steps); each step is a small helper.
Progress and cancellation travel through the observer and the cancel token passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from samplers.registry import (
    SamplerInfo,
    SchedulerInfo,
    compute_sigmas,
    find_sampler,
    find_scheduler,
    sampler_call_kwargs,
)
from webui_api.engine.cond_types import BatchConditioning
from webui_api.engine.conditioning import build_batch_conditioning, stack_at_step
from webui_api.engine.denoiser import CFGDenoiser, CompVisDenoiser, SamplingInterrupted
from webui_api.engine.latents import approx_preview, decode_latents
from webui_api.engine.models import LoadedModel
from webui_api.engine.rng import ImageRNG
from webui_api.errors import BadRequest, NotImplementedFeature
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


@dataclass
class SamplingTrace:
    """The latest x0 estimate the sampler reported: what an interrupted batch decodes.

    It starts as the initial latent, as A1111's `last_latent` does."""

    x0: torch.Tensor


# ---------------------------------------------------------------------------
# Job checks and resolution
# ---------------------------------------------------------------------------


def check_job(job: GenerationJob) -> None:
    """Loud errors for a job the engine cannot run as given."""
    if job.kind != "txt2img":
        raise BadRequest(f"run_txt2img got a job of kind {job.kind!r}; expected 'txt2img'")
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
    """Look up the job's canonical sampler and scheduler names; both must be runnable."""
    sampler = find_sampler(job.sampling.sampler_name)
    if sampler is None or sampler.function is None:
        state = "unknown" if sampler is None else "not implemented yet"
        raise BadRequest(f"sampler {job.sampling.sampler_name!r} is {state}")
    scheduler = find_scheduler(job.sampling.scheduler)
    if scheduler is None:
        raise BadRequest(f"scheduler {job.sampling.scheduler!r} is unknown")
    return SamplerPlan(sampler=sampler, scheduler=scheduler)


def _option(job: GenerationJob, key: str, default: Any) -> Any:
    """A per-job option value; None (unset) falls back to `default`."""
    value = job.options.get(key)
    return default if value is None else value


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


def make_sigmas(model: LoadedModel, job: GenerationJob, plan: SamplerPlan, inner: CompVisDenoiser) -> torch.Tensor:
    """The schedule, computed on CPU with the job's sigma options, moved to the model device."""
    sigmas = compute_sigmas(
        plan.sampler,
        plan.scheduler,
        job.sampling.steps,
        inner.sigmas,
        sigma_min=float(_option(job, "sigma_min", 0.0)),
        sigma_max=float(_option(job, "sigma_max", 0.0)),
        rho=float(_option(job, "rho", 0.0)),
        always_discard_next_to_last_sigma=bool(_option(job, "always_discard_next_to_last_sigma", False)),
        is_sdxl=model.family == "sdxl",
        beta_alpha=float(_option(job, "beta_dist_alpha", 0.6)),
        beta_beta=float(_option(job, "beta_dist_beta", 0.6)),
    )
    return sigmas.to(model.device)


def initial_latent(job: GenerationJob, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x = noise * sigma_0, or * sqrt(1 + sigma_0^2) with the SGM noise multiplier option."""
    if bool(_option(job, "sgm_noise_multiplier", False)):
        return noise * torch.sqrt(1.0 + sigmas[0] ** 2)
    return noise * sigmas[0]


def _eta(job: GenerationJob, plan: SamplerPlan) -> float | None:
    """The request's eta, else A1111's option (eta_ddim for DDIM-family samplers, else
    eta_ancestral), else None: the sampler's own default."""
    if job.sampling.eta is not None or not plan.sampler.takes_eta:
        return job.sampling.eta
    key = "eta_ddim" if plan.sampler.name.startswith("DDIM") else "eta_ancestral"
    return job.options.get(key)


def sampler_kwargs(
    job: GenerationJob, plan: SamplerPlan, sigmas: torch.Tensor, inner: CompVisDenoiser, rng: ImageRNG
) -> dict[str, Any]:
    """Keyword arguments for the sampler function; its noise is the ImageRNG's next draws
    (A1111's TorchHijack). Brownian-tree samplers get the same per-image noise until a
    Brownian noise sampler exists."""
    params = job.sampling
    return sampler_call_kwargs(
        plan.sampler,
        sigmas,
        eta=_eta(job, plan),
        s_churn=params.s_churn,
        s_tmin=params.s_tmin,
        s_tmax=params.s_tmax,
        s_noise=params.s_noise,
        noise_sampler=lambda sigma, sigma_next: rng.next(),
        model_sigma_min=inner.sigma_min,
        model_sigma_max=inner.sigma_max,
    )


def preview_source(job: GenerationJob, cfg: CFGDenoiser, trace: SamplingTrace) -> Callable[[], torch.Tensor]:
    """What a live preview shows (A1111 option live_preview_content, default "Prompt")."""
    content = _option(job, "live_preview_content", "Prompt")

    def latest() -> torch.Tensor:
        if cfg.last is None or content == "Combined":
            return trace.x0
        if content == "Negative prompt" and cfg.last.uncond_denoised is not None:
            return cfg.last.uncond_denoised
        return cfg.last.cond_denoised

    return latest


def make_callback(
    job: GenerationJob, observer: RunObserver, trace: SamplingTrace, latest: Callable[[], torch.Tensor], family: str
) -> Callable[[dict], None]:
    """The sampler callback: remember the x0 estimate, report the step with a lazy preview."""
    total = job.sampling.steps

    def callback(info: dict) -> None:
        trace.x0 = info["denoised"]
        observer.sampling_step(int(info["i"]), total, lambda: approx_preview(latest(), family))

    return callback


# ---------------------------------------------------------------------------
# Conditioning
# ---------------------------------------------------------------------------


def total_steps(job: GenerationJob, plan: SamplerPlan) -> int:
    """A1111's total_steps: the denoiser-call count prompt schedules are laid out on
    (twice the steps for second-order samplers)."""
    return job.sampling.steps * (2 if plan.sampler.options.get("second_order") else 1)


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
        job.options,
        width=job.width,
        height=job.height,
    )


class StepConditioning:
    """Hands the tensor-only CFGDenoiser the conditioning of its current call.

    TODO(merge with issue 3): the CFGDenoiser rewrite consumes BatchConditioning itself
    (AND weights, per-call variants); once it lands, pass the BatchConditioning in
    extra_args and delete this adapter and `single_part_weight`.
    """

    def __init__(self, cfg: CFGDenoiser, conditioning: BatchConditioning) -> None:
        self.cfg = cfg
        self.conditioning = conditioning
        self.weight = single_part_weight(conditioning)

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond_scale: float, s_min_uncond: float = 0.0
    ) -> torch.Tensor:
        step = self.cfg.step
        cond = stack_at_step([image.parts[0][0] for image in self.conditioning.cond], step).crossattn
        uncond = stack_at_step(self.conditioning.uncond, step).crossattn
        return self.cfg(x, sigma, cond, uncond, cond_scale * self.weight, s_min_uncond)


def single_part_weight(conditioning: BatchConditioning) -> float:
    """The one AND weight every image shares (u + w * cfg * (c - u) is CFG at scale w * cfg);
    several AND parts need the composable denoiser, which has not landed yet."""
    weights = {weight for image in conditioning.cond for _, weight in image.parts}
    if any(len(image.parts) != 1 for image in conditioning.cond) or len(weights) != 1:
        raise NotImplementedFeature(
            "prompts with several AND parts (or different AND weights within a batch) need the composable "
            "CFG denoiser, which is not merged yet"
        )
    return weights.pop()


def sample_batch(
    model: LoadedModel,
    job: GenerationJob,
    plan: SamplerPlan,
    batch: BatchSpec,
    observer: RunObserver,
    cancel: CancelToken,
) -> torch.Tensor:
    """Run the sampler for one batch and return its final latents (or, when interrupted or
    skipped, the last x0 estimate)."""
    # 1. conditioning for prompts and negative prompts (schedules, AND parts)
    conditioning = batch_conditioning(model, job, plan, batch)
    # 2. noise and schedule
    inner = CompVisDenoiser(model)
    rng = make_image_rng(model, job, batch)
    sigmas = make_sigmas(model, job, plan, inner)
    x = initial_latent(job, rng.first(), sigmas)
    # 3. denoiser, callback, sampler arguments
    cfg = CFGDenoiser(inner, cancel)
    trace = SamplingTrace(x0=x)
    callback = make_callback(job, observer, trace, preview_source(job, cfg, trace), model.family)
    kwargs = sampler_kwargs(job, plan, sigmas, inner, rng)
    extra_args = {"cond_scale": job.sampling.cfg_scale, "s_min_uncond": job.sampling.s_min_uncond}
    guidance = StepConditioning(cfg, conditioning)
    # 4. sample; an interrupt or skip keeps the last x0 estimate
    try:
        sample = plan.sampler.function
        return sample(guidance, x, sigmas, extra_args=extra_args, callback=callback, disable=True, **kwargs)
    except SamplingInterrupted:
        return trace.x0


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
    images: list[GeneratedImage] = []
    with torch.inference_mode():
        for n in range(job.n_iter):
            # 1. stop between batches on interrupt; a skip only ever ends one batch
            if cancel.interrupted:
                break
            cancel.clear_skip()
            observer.batch_started(n, job.n_iter)
            # 2. sample this batch and decode it image by image
            batch = BatchSpec.of(job, n)
            latents = sample_batch(model, job, plan, batch, observer, cancel)
            images += batch_images(batch, decode_latents(model, latents))
            observer.batch_finished(n)
    return JobResult(images=images, interrupted=cancel.interrupted)

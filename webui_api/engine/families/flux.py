"""Flux.1 generation: flow matching through our k-diffusion-style samplers, as Forge runs it.

Forge treats Flux as a "const" (rectified flow) model: sigma runs from 1 (pure noise) to 0,
the network predicts a velocity v and the sampler sees the x0 estimate `x - sigma * v`. The
sigma table is Forge's: 10000 entries sigma(t) = e^shift / (e^shift + 1/t - 1) with the
model's shift (1.15 for dev, 1.0 for schnell), so A1111's schedulers (Simple, Beta, ...)
index that table; Forge's Normal takes linspace over sigma itself and shifts it again, and
we do the same. img2img noises the init latent the flow way: sigma * noise + (1 - sigma) * init.

Guidance: dev is guidance-distilled, `distilled_cfg_scale` goes into its guidance embedding;
real CFG with the negative prompt only runs when cfg_scale > 1 (Forge's rule); schnell has no
guidance embedding and ignores distilled_cfg_scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from samplers import schedules
from samplers.registry import SamplerInfo, SchedulerInfo, flow_form, flow_sampler_names
from webui_api.engine.conditioning import apply_emphasis
from webui_api.engine.families.flow import (
    FlowFamily,
    PromptFrame,
    ScheduledConds,
    first_call_texts,
    guided_x0,
    module_infotext,
    run_img2img,
    run_txt2img,
    scheduled_prompts,
)
from webui_api.engine.models import LoadedModel
from webui_api.engine.pipeline import (
    LATENT_SCALE,
    BatchSpec,
    SamplerPlan,
    resolve_plan,
)
from webui_api.engine.prompts import fragments_for_emphasis
from webui_api.errors import BadRequest
from webui_api.jobs import GenerationJob, HiresParams, JobResult
from webui_api.progress import CancelToken, RunObserver

FLOW_TABLE_SIZE = 10000
T5_MIN_LENGTH = 256  # Forge pads T5 prompts to at least 256 tokens
CLIP_LENGTH = 77
PATCH = 2  # the transformer sees 2x2 latent patches
DEFAULT_DISTILLED_CFG = 3.5

# The samplers that run on flow models: the deterministic ones as they are (they only see the
# x0 estimate `x - sigma * v`), the others in their rectified-flow forms (registry.FLOW_FORMS).
FLOW_SAMPLERS = flow_sampler_names()
FLOW_SCHEDULERS = ("automatic", "simple", "normal", "beta", "karras", "exponential")


def is_flow_model(model: LoadedModel) -> bool:
    return model.flow_shift is not None


# ---------------------------------------------------------------------------
# Sigma schedules
# ---------------------------------------------------------------------------


def flux_time_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """Forge's flux_time_shift(mu=shift, sigma=1, t)."""
    return math.exp(shift) / (math.exp(shift) + (1.0 / t - 1.0))


def flow_sigma_table(shift: float, size: int = FLOW_TABLE_SIZE) -> torch.Tensor:
    """The ascending sigma table (float32): sigma((i + 1) / size) for i in 0..size-1."""
    t = torch.arange(1, size + 1, dtype=torch.float64) / size
    return flux_time_shift(shift, t).to(torch.float32)


def flow_normal(steps: int, table: torch.Tensor, shift: float) -> torch.Tensor:
    """Forge's Normal for Flux: timestep(sigma) is sigma itself, so it spaces sigma_max..sigma_min
    evenly and applies the shift to those values once more."""
    ts = torch.linspace(float(table[-1]), float(table[0]), steps, dtype=torch.float64)
    return torch.cat([flux_time_shift(shift, ts).to(torch.float32), torch.zeros(1)])


def flow_sigmas(job: GenerationJob, plan: SamplerPlan, shift: float) -> torch.Tensor:
    """The job's sigma schedule on the flow table (CPU float32, ending in 0)."""
    steps = job.sampling.steps
    table = flow_sigma_table(shift)
    name = plan.scheduler.name
    if name in ("automatic", "simple"):  # Forge's Flux preset: Simple
        return schedules.simple(steps, 0.0, 0.0, table)
    if name == "normal":
        return flow_normal(steps, table, shift)
    low, high = float(table[0]), float(table[-1])
    if name == "beta":
        alpha = job.engine_options.beta_dist_alpha
        beta = job.engine_options.beta_dist_beta
        return schedules.beta(steps, low, high, table, alpha=alpha, beta_param=beta)
    if name == "karras":
        return schedules.karras(steps, low, high, rho=job.engine_options.rho or 7.0)
    return schedules.exponential(steps, low, high)


def check_flow_plan(plan: SamplerPlan, family: str = "Flux") -> None:
    """Flow models (Flux, SD3) run the samplers that have a flow form (FLOW_SAMPLERS) and the
    table schedulers; anything else is a 400 naming the sampler and the `family`."""
    sampler: SamplerInfo = plan.sampler
    scheduler: SchedulerInfo = plan.scheduler
    if flow_form(sampler) is None:
        raise BadRequest(f"sampler {sampler.name!r} cannot run {family} models; use one of {list(FLOW_SAMPLERS)}")
    if scheduler.name not in FLOW_SCHEDULERS:
        raise BadRequest(
            f"schedule type {scheduler.label!r} cannot run {family} models; use one of {list(FLOW_SCHEDULERS)}"
        )


# ---------------------------------------------------------------------------
# Text conditioning
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FluxCond:
    """One batch of prompts encoded for Flux: T5 states (B, L, 4096) and CLIP-L pooled (B, 768)."""

    t5: torch.Tensor
    pooled: torch.Tensor


def t5_tokens(tokenizer: Any, text: str, emphasis: str) -> tuple[list[int], list[float]]:
    """T5 token ids with per-token emphasis weights; end-of-sequence, then padding to 256."""
    ids: list[int] = []
    weights: list[float] = []
    for fragment in fragments_for_emphasis(text, emphasis):
        if fragment.is_break or not fragment.text:
            continue
        piece = tokenizer(fragment.text, add_special_tokens=False)["input_ids"]
        ids += piece
        weights += [fragment.weight] * len(piece)
    ids.append(int(tokenizer.eos_token_id))
    weights.append(1.0)
    pad = max(T5_MIN_LENGTH - len(ids), 0)
    return ids + [int(tokenizer.pad_token_id)] * pad, weights + [1.0] * pad


def encode_t5(model: LoadedModel, texts: Sequence[str], emphasis: str) -> torch.Tensor:
    tokens = [t5_tokens(model.tokenizer_2, text, emphasis) for text in texts]
    length = max(len(ids) for ids, _ in tokens)
    pad = int(model.tokenizer_2.pad_token_id)
    ids = torch.tensor([i + [pad] * (length - len(i)) for i, _ in tokens], device=model.device)
    weights = torch.tensor([w + [1.0] * (length - len(w)) for _, w in tokens], device=model.device)
    states = model.text_encoder_2(ids, return_dict=True).last_hidden_state
    return apply_emphasis(states.float(), weights, emphasis).to(model.dtype)


def plain_text(text: str) -> str:
    """The prompt without emphasis brackets (CLIP-L's pooled vector takes the words only)."""
    return " ".join(f.text for f in fragments_for_emphasis(text, "Original") if not f.is_break)


def encode_clip_pooled(model: LoadedModel, texts: Sequence[str]) -> torch.Tensor:
    tokenizer = model.tokenizer
    batch = tokenizer(
        [plain_text(text) for text in texts],
        padding="max_length",
        max_length=CLIP_LENGTH,
        truncation=True,
        return_tensors="pt",
    )
    out = model.text_encoder(batch["input_ids"].to(model.device), return_dict=True)
    return out.pooler_output.to(model.dtype)


def encode_texts(model: LoadedModel, texts: Sequence[str], job: GenerationJob) -> FluxCond:
    """Texts as they are (prompt editing already resolved), one row each."""
    emphasis = job.engine_options.emphasis
    return FluxCond(t5=encode_t5(model, texts, emphasis), pooled=encode_clip_pooled(model, texts))


def encode_prompts(model: LoadedModel, texts: Sequence[str], job: GenerationJob) -> FluxCond:
    """Prompts as the first denoiser call sees them (editing resolved at step 0, AND parts joined)."""
    return encode_texts(model, first_call_texts(texts, job.sampling.steps), job)


# ---------------------------------------------------------------------------
# The denoiser
# ---------------------------------------------------------------------------


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/2 * w/2, 4C) patch tokens."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(tokens: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
    b = tokens.shape[0]
    x = tokens.view(b, h // PATCH, w // PATCH, channels, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, h, w)


def image_ids(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Position ids (0, row, column) of the patch tokens."""
    ids = torch.zeros(h // PATCH, w // PATCH, 3, device=device)
    ids[..., 1] = torch.arange(h // PATCH, device=device)[:, None]
    ids[..., 2] = torch.arange(w // PATCH, device=device)[None, :]
    return ids.reshape(-1, 3)


@dataclass
class FluxDenoiser:
    """The sampler's model: x0 = x - sigma * v with each call's scheduled conditioning, real CFG
    when cfg_scale > 1."""

    model: LoadedModel
    cond: ScheduledConds
    uncond: ScheduledConds | None
    cfg_scale: float
    distilled_cfg: float | None  # None: schnell (no guidance embedding)
    cancel: CancelToken
    blend: Callable[[torch.Tensor], torch.Tensor] | None = None
    last_cond_x0: torch.Tensor | None = None
    last_uncond_x0: torch.Tensor | None = None
    step: int = 0  # denoiser calls so far (A1111's step counter for prompt schedules)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: FluxCond) -> torch.Tensor:
        transformer = self.model.unet
        dtype = self.model.dtype
        b, c, h, w = x.shape
        guidance = None
        if self.distilled_cfg is not None:
            guidance = torch.full((b,), self.distilled_cfg, device=x.device, dtype=torch.float32)
        out = transformer(
            hidden_states=pack(x).to(dtype),
            encoder_hidden_states=cond.t5,
            pooled_projections=cond.pooled,
            timestep=sigma.to(dtype),
            img_ids=image_ids(h, w, x.device),
            txt_ids=torch.zeros(cond.t5.shape[1], 3, device=x.device),
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack(out.float(), c, h, w)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        return guided_x0(self, x, sigma)


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


def check_flux_job(model: LoadedModel, job: GenerationJob) -> SamplerPlan:
    if job.width % (LATENT_SCALE * PATCH) or job.height % (LATENT_SCALE * PATCH):
        raise BadRequest(f"Flux needs width and height in multiples of 16, got {job.width}x{job.height}")
    if job.refiner is not None:
        raise BadRequest("the refiner is not available for Flux models yet")
    if job.controlnet_units:
        raise BadRequest("ControlNet units are not available for Flux models")
    plan = resolve_plan(job)
    check_flow_plan(plan)
    return plan


def distilled_cfg(model: LoadedModel, job: GenerationJob) -> float | None:
    if not model.unet.config.guidance_embeds:
        return None
    return float(job.sampling.distilled_cfg_scale)


def make_denoiser(
    model: LoadedModel, job: GenerationJob, batch: BatchSpec, cancel: CancelToken, blend: Any = None,
    frame: PromptFrame | None = None,
) -> FluxDenoiser:
    frame = frame or PromptFrame(job.sampling.steps)
    cond = scheduled_prompts(model, batch.prompts, job, frame, encode_texts)
    negatives = batch.negative_prompts
    uncond = scheduled_prompts(model, negatives, job, frame, encode_texts) if job.sampling.cfg_scale > 1 else None
    return FluxDenoiser(model, cond, uncond, job.sampling.cfg_scale, distilled_cfg(model, job), cancel, blend)


def flux_infotext(model: LoadedModel, job: GenerationJob) -> dict[str, Any]:
    """Forge's infotext additions for Flux: Distilled CFG Scale (dev) and the module files."""
    extra: dict[str, Any] = {}
    if model.unet.config.guidance_embeds:
        extra["Distilled CFG Scale"] = job.sampling.distilled_cfg_scale
    return {**extra, **module_infotext(model, job)}


def flux_hires_infotext(model: LoadedModel, hires: HiresParams) -> dict[str, Any]:
    """Forge writes the hires pass's distilled CFG (`hr_distilled_cfg`) for guidance-distilled models."""
    if not model.unet.config.guidance_embeds:
        return {}
    return {"Hires Distilled CFG Scale": hires.sampling.distilled_cfg_scale}


def flux_sigmas(model: LoadedModel, job: GenerationJob, plan: SamplerPlan) -> torch.Tensor:
    return flow_sigmas(job, plan, float(model.flow_shift or 1.0))


def flux_sigma_at(model: LoadedModel, t: float) -> float:
    """Flux's sigma at timestep fraction t (0..1] with the model's shift."""
    return float(flux_time_shift(float(model.flow_shift or 1.0), torch.tensor(t, dtype=torch.float64)))


FLUX = FlowFamily(
    check_job=check_flux_job,
    sigmas=flux_sigmas,
    sigma_at=flux_sigma_at,
    make_denoiser=make_denoiser,
    infotext=flux_infotext,
    hires_infotext=flux_hires_infotext,
)


def run_flux_txt2img(
    model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken, **_: Any
) -> JobResult:
    """txt2img; with hires params, the second pass runs like img2img at the target size with
    the hires sampler, prompts and `hr_distilled_cfg` (built-in and latent upscalers)."""
    return run_txt2img(FLUX, model, job, observer, cancel)


def run_flux_img2img(
    model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken, **_: Any
) -> JobResult:
    """img2img and inpainting (mask blend) on the flow schedule's tail."""
    return run_img2img(FLUX, model, job, observer, cancel)

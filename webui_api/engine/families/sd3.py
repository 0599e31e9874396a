"""SD3 / SD3.5 generation: flow matching through our k-diffusion-style samplers, as Forge runs it.

SD3 is a rectified-flow model like Flux: sigma runs from 1 to 0, the MMDiT predicts a velocity v
and the sampler sees `x - sigma * v`. The sigma table is ComfyUI/Forge's ModelSamplingDiscreteFlow
for SD3: 1000 entries sigma(t) = shift * t / (1 + (shift - 1) * t), t = (i + 1) / 1000, shift 3.0;
the network gets the timestep sigma * 1000. A1111's schedulers index that table (Simple, Beta,
...); Normal spaces the timesteps linearly between sigma_max and sigma_min and maps them through
the table's formula again, as Forge's normal scheduler does.

Conditioning (Forge's SD3 text processing): CLIP-L and CLIP-G read A1111's prompt syntax (75-token
chunks, emphasis, BREAK) at their penultimate layers; their states are concatenated (768 + 1280)
and zero-padded to T5's width; T5-XXL's states (at least 256 tokens) follow along the token axis,
or zeros of that size when the model has no T5. The pooled vector is CLIP-L's and CLIP-G's
projected pooled outputs side by side. SD3 is not guidance-distilled: the negative prompt runs
through real CFG whenever cfg_scale differs from 1 (at 1 the result would equal the positive).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from samplers import schedules
from webui_api.engine.conditioning import (
    LAYER_PENULTIMATE,
    ConditioningSettings,
    TextEncoderSpec,
    apply_emphasis,
    encode_with,
)
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
from webui_api.engine.families.flux import T5_MIN_LENGTH, check_flow_plan, t5_tokens
from webui_api.engine.models import LoadedModel
from webui_api.engine.pipeline import (
    LATENT_SCALE,
    BatchSpec,
    SamplerPlan,
    resolve_plan,
)
from webui_api.errors import BadRequest
from webui_api.jobs import GenerationJob, JobResult
from webui_api.progress import CancelToken, RunObserver

SD3_TABLE_SIZE = 1000
TIMESTEP_MULTIPLIER = 1000.0
PATCH = 2


# ---------------------------------------------------------------------------
# Sigma schedules
# ---------------------------------------------------------------------------


def time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """ComfyUI's time_snr_shift(alpha, t) = alpha * t / (1 + (alpha - 1) * t)."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def sd3_sigma_table(shift: float, size: int = SD3_TABLE_SIZE) -> torch.Tensor:
    """The ascending sigma table (float32): sigma((i + 1) / size) for i in 0..size-1."""
    t = torch.arange(1, size + 1, dtype=torch.float64) / size
    return time_snr_shift(shift, t).to(torch.float32)


def sd3_normal(steps: int, table: torch.Tensor, shift: float) -> torch.Tensor:
    """Forge's Normal on a flow model: timestep(sigma) = sigma, linspace from sigma_max to
    sigma_min, then sigma(t) applies the shift once more; a final 0 is appended."""
    ts = torch.linspace(float(table[-1]), float(table[0]), steps, dtype=torch.float64)
    return torch.cat([time_snr_shift(shift, ts).to(torch.float32), torch.zeros(1)])


def sd3_sigmas(job: GenerationJob, plan: SamplerPlan, shift: float) -> torch.Tensor:
    """The job's sigma schedule on the SD3 table (CPU float32, ending in 0)."""
    steps = job.sampling.steps
    table = sd3_sigma_table(shift)
    name = plan.scheduler.name
    if name in ("automatic", "simple"):
        return schedules.simple(steps, 0.0, 0.0, table)
    if name == "normal":
        return sd3_normal(steps, table, shift)
    low, high = float(table[0]), float(table[-1])
    if name == "beta":
        options = job.engine_options
        return schedules.beta(steps, low, high, table, alpha=options.beta_dist_alpha, beta_param=options.beta_dist_beta)
    if name == "karras":
        return schedules.karras(steps, low, high, rho=job.engine_options.rho or 7.0)
    return schedules.exponential(steps, low, high)


# ---------------------------------------------------------------------------
# Text conditioning
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SD3Cond:
    """One batch of prompts encoded for SD3: context (B, L, joint_dim) and pooled (B, 2048)."""

    context: torch.Tensor
    pooled: torch.Tensor


def clip_specs(model: LoadedModel) -> tuple[TextEncoderSpec, TextEncoderSpec]:
    """CLIP-L pads with end-of-text, CLIP-G with 0 (as for SDXL); both at the penultimate layer
    and both pooled (their projected pooled outputs are concatenated)."""
    clip_l = TextEncoderSpec(model.text_encoder, model.tokenizer, "text_encoder", LAYER_PENULTIMATE, pooled=True)
    clip_g = TextEncoderSpec(
        model.text_encoder_2, model.tokenizer_2, "text_encoder_2", LAYER_PENULTIMATE, pad_with_zero=True, pooled=True
    )
    return clip_l, clip_g


def encode_t5_states(model: LoadedModel, texts: Sequence[str], emphasis: str, width: int) -> torch.Tensor:
    """T5's states with emphasis; zeros (B, 256, width) when the model has no T5."""
    if model.text_encoder_3 is None:
        return torch.zeros(len(texts), T5_MIN_LENGTH, width, device=model.device)
    tokens = [t5_tokens(model.tokenizer_3, text, emphasis) for text in texts]
    length = max(len(ids) for ids, _ in tokens)
    pad = int(model.tokenizer_3.pad_token_id)
    ids = torch.tensor([i + [pad] * (length - len(i)) for i, _ in tokens], device=model.device)
    weights = torch.tensor([w + [1.0] * (length - len(w)) for _, w in tokens], device=model.device)
    states = model.text_encoder_3(ids, return_dict=True).last_hidden_state
    return apply_emphasis(states.float(), weights, emphasis)


def encode_prompts(model: LoadedModel, texts: Sequence[str], job: GenerationJob) -> SD3Cond:
    """Prompts as the first denoiser call sees them (editing resolved at step 0, AND parts joined)."""
    return encode_texts(model, first_call_texts(texts, job.sampling.steps), job)


def encode_texts(model: LoadedModel, resolved: Sequence[str], job: GenerationJob) -> SD3Cond:
    """Texts as they are (prompt editing already resolved), one row each."""
    settings = ConditioningSettings.from_options(job.engine_options)
    clip_l, clip_g = (encode_with(spec, resolved, settings) for spec in clip_specs(model))
    width = int(model.unet.config.joint_attention_dim)
    lg = torch.cat([clip_l.crossattn, clip_g.crossattn], dim=-1)
    if lg.shape[-1] > width:
        raise BadRequest(f"CLIP widths {lg.shape[-1]} exceed the model's context width {width}")
    lg = torch.nn.functional.pad(lg, (0, width - lg.shape[-1]))
    t5 = encode_t5_states(model, resolved, settings.emphasis, width)
    if clip_l.pooled is None or clip_g.pooled is None:
        raise ValueError("SD3 needs the pooled output of both CLIP encoders")
    pooled = torch.cat([clip_l.pooled, clip_g.pooled], dim=-1)
    return SD3Cond(context=torch.cat([lg, t5.to(lg.device)], dim=1).to(model.dtype), pooled=pooled.to(model.dtype))


# ---------------------------------------------------------------------------
# The denoiser
# ---------------------------------------------------------------------------


@dataclass
class SD3Denoiser:
    """The sampler's model: x0 = x - sigma * v with each call's scheduled conditioning, CFG on the
    negative prompt."""

    model: LoadedModel
    cond: ScheduledConds
    uncond: ScheduledConds | None
    cfg_scale: float
    cancel: CancelToken
    blend: Callable[[torch.Tensor], torch.Tensor] | None = None
    last_cond_x0: torch.Tensor | None = None
    last_uncond_x0: torch.Tensor | None = None
    step: int = 0  # denoiser calls so far (A1111's step counter for prompt schedules)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: SD3Cond) -> torch.Tensor:
        dtype = self.model.dtype
        timestep = (sigma.reshape(-1) * TIMESTEP_MULTIPLIER).expand(x.shape[0])
        out = self.model.unet(
            hidden_states=x.to(dtype),
            encoder_hidden_states=cond.context,
            pooled_projections=cond.pooled,
            timestep=timestep.to(dtype),
            return_dict=False,
        )[0]
        return out.float()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        return guided_x0(self, x, sigma)


def make_denoiser(
    model: LoadedModel, job: GenerationJob, batch: BatchSpec, cancel: CancelToken, blend: Any = None,
    frame: PromptFrame | None = None,
) -> SD3Denoiser:
    frame = frame or PromptFrame(job.sampling.steps)
    cond = scheduled_prompts(model, batch.prompts, job, frame, encode_texts)
    negatives = batch.negative_prompts
    uncond = scheduled_prompts(model, negatives, job, frame, encode_texts) if job.sampling.cfg_scale != 1 else None
    return SD3Denoiser(model, cond, uncond, job.sampling.cfg_scale, cancel, blend)


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


def check_sd3_job(model: LoadedModel, job: GenerationJob) -> SamplerPlan:
    step = LATENT_SCALE * PATCH
    if job.width % step or job.height % step:
        raise BadRequest(f"SD3 needs width and height in multiples of {step}, got {job.width}x{job.height}")
    limit = int(model.unet.config.pos_embed_max_size) * step
    if max(job.width, job.height) > limit:
        raise BadRequest(f"this SD3 model generates at most {limit}x{limit} pixels, got {job.width}x{job.height}")
    if job.refiner is not None:
        raise BadRequest("the refiner is not available for SD3 models yet")
    if job.controlnet_units:
        raise BadRequest("ControlNet units are not available for SD3 models")
    plan = resolve_plan(job)
    check_flow_plan(plan, "SD3")
    return plan


def shift(model: LoadedModel) -> float:
    return float(model.flow_shift if model.flow_shift is not None else 3.0)


def sd3_family_sigmas(model: LoadedModel, job: GenerationJob, plan: SamplerPlan) -> torch.Tensor:
    return sd3_sigmas(job, plan, shift(model))


def sd3_family_infotext(model: LoadedModel, job: GenerationJob) -> dict[str, Any]:
    """Forge's SD3 additions: only the module files (no distilled CFG, no shift key)."""
    return module_infotext(model, job)


def sd3_sigma_at(model: LoadedModel, t: float) -> float:
    """SD3's sigma at timestep fraction t (0..1] with the model's shift."""
    return float(time_snr_shift(shift(model), torch.tensor(t, dtype=torch.float64)))


SD3 = FlowFamily(
    check_job=check_sd3_job, sigmas=sd3_family_sigmas, sigma_at=sd3_sigma_at, make_denoiser=make_denoiser,
    infotext=sd3_family_infotext,
)


def run_sd3_txt2img(
    model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken, **_: Any
) -> JobResult:
    """txt2img; with hires params, the second pass runs like img2img at the target size."""
    return run_txt2img(SD3, model, job, observer, cancel)


def run_sd3_img2img(
    model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken, **_: Any
) -> JobResult:
    """img2img and inpainting (mask blend) on the flow schedule's tail."""
    return run_img2img(SD3, model, job, observer, cancel)

"""The seam between diffusers' UNet and the samplers: model wrappers and guidance.

Samplers call ``model(x, schedule_value, **extra_args)``. What sits behind that call:

- ``UNetRunner`` runs the diffusers UNet: dtype casts, SDXL's added conditions (split from
  ``CondTensors.vector``), and the channel concat of inpainting UNets (``image_cond``).
- An *inner* wrapper turns the UNet into what a sampler family expects, as A1111 picks it:
  ``CompVisDenoiser`` / ``CompVisVDenoiser`` (k-diffusion samplers: x0 from sigma, fractional
  timesteps), ``TimestepDenoiser`` (DDIM/PLMS/UniPC: eps at a timestep, v converted to eps)
  and ``LCMDenoiser`` (LCM's 50-step table and boundary condition).
- ``CFGDenoiser`` is A1111's CFG denoiser: per-call prompt-schedule variants, composable AND
  sub-prompts with weights, NGMS / skip-early-CFG, the inpaint blend hook, the cancel check.

Guidance is linear, so it works unchanged on x0 (k-diffusion) and on eps (timestep samplers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from samplers import lcm as lcm_math
from samplers.schedules import sigma_table, sigma_to_t
from webui_api.engine.cond_types import BatchConditioning, CondTensors, split_sdxl_vector
from webui_api.engine.models import LoadedModel

PREDICTION_TYPES = ("epsilon", "v_prediction")


class StopSignal(Protocol):
    """What the CFG denoiser reads from a cancel token (progress.CancelToken, or a batch's
    combined one) before each step."""

    @property
    def should_stop_sampling(self) -> bool: ...

    @property
    def interrupted(self) -> bool: ...


class SamplingInterrupted(Exception):
    """Raised inside a sampler when the job was interrupted or skipped; the caller catches it
    and keeps the last x0 estimate, as A1111 does."""


def _per_row(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-row scalar shaped to broadcast over (B, C, H, W)."""
    return v.reshape((-1,) + (1,) * (ndim - 1))


# ---------------------------------------------------------------------------
# Conditioning as the UNet receives it
# ---------------------------------------------------------------------------


def pad_tokens(crossattn: torch.Tensor, tokens: int) -> torch.Tensor:
    """Lengthen (T, C) to ``tokens`` rows by repeating the last token vector (A1111's stack_conds)."""
    missing = tokens - crossattn.shape[0]
    if missing <= 0:
        return crossattn
    return torch.vstack([crossattn, crossattn[-1:].repeat([missing, 1])])


@dataclass(frozen=True)
class CondBatch:
    """Stacked conditioning rows for one UNet call: (N, tokens, C) and, for SDXL, (N, D) vectors."""

    crossattn: torch.Tensor
    vector: torch.Tensor | None = None
    uncond_rows: int = 0  # trailing negative-prompt rows (ControlNet's "ControlNet is more important")

    @property
    def tokens(self) -> int:
        return int(self.crossattn.shape[1])

    @classmethod
    def stack(cls, items: Sequence[CondTensors]) -> CondBatch:
        """Rows of different token lengths are padded by repeating their last token vector."""
        tokens = max(item.crossattn.shape[0] for item in items)
        crossattn = torch.stack([pad_tokens(item.crossattn, tokens) for item in items])
        vectors = [item.vector for item in items if item.vector is not None]
        if not vectors:
            return cls(crossattn)
        if len(vectors) != len(items):
            raise ValueError("either every conditioning row has an SDXL vector or none does; got a mix")
        return cls(crossattn, torch.stack(vectors))

    def cat(self, other: CondBatch) -> CondBatch:
        vector = None
        if self.vector is not None:
            if other.vector is None:
                raise ValueError("either every conditioning row has an SDXL vector or none does; got a mix")
            vector = torch.cat([self.vector, other.vector])
        return CondBatch(torch.cat([self.crossattn, other.crossattn]), vector, self.uncond_rows + other.uncond_rows)

    def rows(self, start: int, stop: int) -> CondBatch:
        """Rows [start, stop); uncond_rows counts the trailing negative rows that fall inside."""
        total = self.crossattn.shape[0]
        uncond = max(0, stop - max(start, total - self.uncond_rows)) if self.uncond_rows else 0
        vector = None if self.vector is None else self.vector[start:stop]
        return CondBatch(self.crossattn[start:stop], vector, min(uncond, stop - start))

    @classmethod
    def of(cls, cond: CondBatch | torch.Tensor) -> CondBatch:
        """Accept a bare (N, tokens, C) tensor where no SDXL vector is involved."""
        return cond if isinstance(cond, CondBatch) else cls(cond)


class UNetRunner:
    """Calls the diffusers UNet the way every wrapper needs it.

    Inputs are cast to the model dtype and the output back to float32 (sampler state stays
    float32, as in A1111). SDXL UNets (``addition_embed_type == "text_time"``) get
    ``added_cond_kwargs`` split from the conditioning vector; ``image_cond`` (inpainting UNets)
    is concatenated to the already scaled latent along channels, like ldm's hybrid wrapper.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.unet = model.unet
        self.dtype = model.dtype
        self.autocast = bool(getattr(model, "autocast", False))
        self.device_type = torch.device(getattr(model, "device", "cpu")).type
        config = getattr(model.unet, "config", None)
        self.needs_vector = getattr(config, "addition_embed_type", None) == "text_time"
        self.config: Any = config  # diffusers config: attributes by model type
        self.control = None  # webui_api.engine.control.ControlHook while ControlNet units act

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond: CondBatch, image_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        latent = x
        if image_cond is not None:
            x = torch.cat([x, image_cond.to(x.dtype)], dim=1)
        extra = {}
        if self.needs_vector:
            if cond.vector is None:
                raise ValueError("this UNet needs SDXL conditioning (CondTensors.vector), got none")
            text_embeds, time_ids = split_sdxl_vector(
                cond.vector, self.config.projection_class_embeddings_input_dim, self.config.addition_time_embed_dim
            )
            extra["added_cond_kwargs"] = {"text_embeds": text_embeds.to(self.dtype), "time_ids": time_ids}
        if self.control is not None:
            extra.update(
                self.control(latent.to(self.dtype), t, cond.crossattn, cond.uncond_rows, extra.get("added_cond_kwargs"))
            )
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.autocast):
            out = self.unet(x.to(self.dtype), t, encoder_hidden_states=cond.crossattn.to(self.dtype), return_dict=False,
                            **extra)
        return out[0].to(torch.float32)


# ---------------------------------------------------------------------------
# Inner wrappers
# ---------------------------------------------------------------------------


def check_prediction_type(model: LoadedModel) -> str:
    if model.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {model.prediction_type!r}")
    return model.prediction_type


class _SigmaRange:
    """The range of a wrapper's ascending `sigmas` table (what schedules start and end at)."""

    sigmas: torch.Tensor

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])


class CompVisDenoiser(_SigmaRange):
    """D(x, sigma) for an eps-prediction UNet: x + eps(x * c_in, t(sigma)) * c_out, c_out = -sigma.

    The sigma table comes from the model's float32 alphas_cumprod; the UNet gets fractional
    timesteps (log-sigma interpolation), exactly what A1111's wrapper feeds it.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.unet = UNetRunner(model)
        self.alphas_cumprod = model.alphas_cumprod
        self.sigmas = sigma_table(model.alphas_cumprod)  # CPU float32, ascending
        self.log_sigmas = self.sigmas.log().to(model.device)

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond, image_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        sigma = sigma.to(device=x.device, dtype=torch.float32)
        c_in = _per_row(1.0 / (sigma**2 + 1.0) ** 0.5, x.ndim)
        out = self.unet(x * c_in, sigma_to_t(sigma, self.log_sigmas), CondBatch.of(cond), image_cond)
        return self.output(x, out, sigma)

    def output(self, x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x + eps * _per_row(-sigma, x.ndim)

    def to_x0(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The x0 estimate behind an output (outputs already are x0 here)."""
        return out


class CompVisVDenoiser(CompVisDenoiser):
    """D(x, sigma) for a v-prediction UNet: v * c_out + x * c_skip (sigma_data = 1)."""

    def output(self, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_skip = _per_row(1.0 / (sigma**2 + 1.0), x.ndim)
        c_out = _per_row(-sigma * 1.0 / (sigma**2 + 1.0) ** 0.5, x.ndim)
        return v * c_out + x * c_skip


class TimestepDenoiser:
    """eps(x, t) for the timestep samplers: the UNet on the unscaled latent at timestep t.

    v-prediction output is converted with eps = sqrt(ᾱ_t) v + sqrt(1 - ᾱ_t) x, ᾱ taken at the
    integer part of t (A1111's ``t.to(int)``, which truncates UniPC's fractional times).
    """

    def __init__(self, model: LoadedModel) -> None:
        self.unet = UNetRunner(model)
        self.alphas_cumprod = model.alphas_cumprod.to(device=model.device, dtype=torch.float32)
        self.v_prediction = check_prediction_type(model) == "v_prediction"

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond, image_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.unet(x, t, CondBatch.of(cond), image_cond)
        if not self.v_prediction:
            return out
        index = t.to(torch.int)
        return _per_row(torch.sqrt(self.alphas_cumprod)[index], x.ndim) * out + _per_row(
            torch.sqrt(1 - self.alphas_cumprod)[index], x.ndim
        ) * x

    def to_x0(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a_t = _per_row(self.alphas_cumprod[t.long()], x.ndim)
        return (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()


class LCMDenoiser(_SigmaRange):
    """A1111's LCM wrapper: 50-entry sigma table, timesteps quantised to t = 19, 39, ..., 999,
    and LCM's boundary condition c_out * x0 + c_skip * x with c from 10 * t."""

    def __init__(self, model: LoadedModel) -> None:
        self.unet = UNetRunner(model)
        self.skip = lcm_math.skip_steps(model.alphas_cumprod)
        self.sigmas = lcm_math.lcm_sigma_table(model.alphas_cumprod).cpu()
        self.log_sigmas = self.sigmas.log().to(model.device)

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond, image_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        sigma = sigma.to(device=x.device, dtype=torch.float32)
        c_in = _per_row(1 / (sigma**2 + 1.0) ** 0.5, x.ndim)
        t = lcm_math.lcm_sigma_to_t(sigma, self.log_sigmas, self.skip)
        eps = self.unet(x * c_in, t, CondBatch.of(cond), image_cond)
        denoised = x + eps * _per_row(-sigma, x.ndim)
        scaled_t = _per_row(t, x.ndim) * lcm_math.TIMESTEP_SCALING
        c_skip = lcm_math.SIGMA_DATA**2 / (scaled_t**2 + lcm_math.SIGMA_DATA**2)
        c_out = scaled_t / (scaled_t**2 + lcm_math.SIGMA_DATA**2) ** 0.5
        return c_out * denoised + c_skip * x

    def to_x0(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return out


def make_inner(model: LoadedModel, kind: str):
    """The inner wrapper for a sampler kind ("sigmas", "timesteps" or "lcm"), as A1111 picks it."""
    if kind == "timesteps":
        return TimestepDenoiser(model)
    if kind == "lcm":
        return LCMDenoiser(model)
    if kind != "sigmas":
        raise ValueError(f"sampler kind must be 'sigmas', 'timesteps' or 'lcm', got {kind!r}")
    return CompVisVDenoiser(model) if check_prediction_type(model) == "v_prediction" else CompVisDenoiser(model)


# ---------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InpaintBlend:
    """Masked blending with the clean init latent: latent * nmask + init_latent * mask.

    ``mask`` is 1 where the original is kept, ``nmask`` 1 where the model repaints (A1111 keeps
    both rather than computing one from the other). k-diffusion samplers blend the x0
    prediction after guidance; timestep samplers blend x before every model call.
    """

    init_latent: torch.Tensor
    mask: torch.Tensor
    nmask: torch.Tensor

    @classmethod
    def from_latent_mask(cls, init_latent: torch.Tensor, latmask: torch.Tensor) -> InpaintBlend:
        """From A1111's latmask (1 = repaint): mask = 1 - latmask, nmask = latmask."""
        return cls(init_latent=init_latent, mask=1 - latmask, nmask=latmask)

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.nmask + self.init_latent * self.mask


@dataclass(frozen=True)
class GuidanceOptions:
    """Per-pass guidance settings.

    total_steps: A1111's total_steps (steps, doubled for second-order samplers); used by
    skip_early_cond (A1111 option: skip the uncond while step / total_steps <= it).
    s_min_uncond_all: NGMS on every call, not just odd ones. mask_before_denoising: where the
    inpaint blend applies (True for timestep samplers).
    """

    total_steps: int = 0
    skip_early_cond: float = 0.0
    s_min_uncond_all: bool = False
    mask_before_denoising: bool = False
    image_cfg_scale: float | None = None  # instruct-pix2pix guidance (None / 1.0: plain CFG)
    # A1111's pad_cond_uncond(_v0) and batch_cond_uncond options; empty_crossattn is the
    # (tokens, C) encoding of "" that pad_cond_uncond pads with (the model's empty prompt).
    pad_cond_uncond: bool = False
    pad_cond_uncond_v0: bool = False
    batch_cond_uncond: bool = True
    empty_crossattn: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.skip_early_cond and self.total_steps < 1:
            raise ValueError(f"skip_early_cond needs total_steps >= 1, got {self.total_steps}")
        if self.pad_cond_uncond and not self.pad_cond_uncond_v0 and self.empty_crossattn is None:
            raise ValueError("pad_cond_uncond needs empty_crossattn (the encoding of the empty prompt), got None")


def pad_cond_pair(cond: CondBatch, uncond: CondBatch, opts: GuidanceOptions) -> tuple[CondBatch, CondBatch]:
    """A1111's padding of cond and uncond to one token length, so they share a UNet call.

    v0 (checked first): the uncond is lengthened by repeating its last token vector, or cut
    to the cond's length. Otherwise pad_cond_uncond appends whole copies of the empty-prompt
    encoding to the shorter side, as many as (cond - uncond tokens) // empty tokens says
    (floor division, as A1111). Without either option the lengths stay and guidance makes
    two UNet calls.
    """
    if cond.tokens == uncond.tokens:
        return cond, uncond
    if opts.pad_cond_uncond_v0:
        crossattn = uncond.crossattn[:, : cond.tokens]
        crossattn = torch.stack([pad_tokens(row, cond.tokens) for row in crossattn])
        return cond, replace(uncond, crossattn=crossattn)
    if not opts.pad_cond_uncond:
        return cond, uncond
    empty = opts.empty_crossattn
    if empty is None:
        raise ValueError("pad_cond_uncond needs the empty prompt's crossattn (DenoiserOptions.empty_crossattn)")
    repeats = (cond.tokens - uncond.tokens) // empty.shape[0]
    if repeats < 0:
        return _pad_with_empty(cond, -repeats, empty), uncond
    return cond, _pad_with_empty(uncond, repeats, empty)


PAD_CONDS = "Pad conds"
PAD_CONDS_V0 = "Pad conds v0"


def padding_applied(cond: CondBatch, uncond: CondBatch, opts: GuidanceOptions) -> str | None:
    """The infotext key of the padding `pad_cond_pair` does to this pair, None when it changes
    no length. A1111 raises `padded_cond_uncond(_v0)` only when a length actually changed: v0
    whenever the lengths differ, pad_cond_uncond when at least one empty-prompt chunk is added."""
    if cond.tokens == uncond.tokens:
        return None
    if opts.pad_cond_uncond_v0:
        return PAD_CONDS_V0
    empty = opts.empty_crossattn
    if opts.pad_cond_uncond and empty is not None and (cond.tokens - uncond.tokens) // empty.shape[0] != 0:
        return PAD_CONDS
    return None


@dataclass
class PaddingRecord:
    """Which padding a job's sampling ran with, for its infotext.

    A1111 resets its flags on every denoiser call and, after each sampler run, copies the last
    call's flags into `p.extra_generation_params`, where they stay for the rest of the job (so a
    hires pass or a later batch that padded marks the job too)."""

    keys: set[str] = field(default_factory=set)

    def note(self, cfg: CFGDenoiser) -> None:
        """After one sampler run: keep the padding of its last denoiser call."""
        if cfg.padded is not None:
            self.keys.add(cfg.padded)

    def infotext(self) -> dict[str, bool]:
        """`Pad conds: True` / `Pad conds v0: True`, in A1111's order."""
        return {key: True for key in (PAD_CONDS, PAD_CONDS_V0) if key in self.keys}


def _pad_with_empty(batch: CondBatch, repeats: int, empty: torch.Tensor) -> CondBatch:
    """Every row gets `repeats` copies of the empty-prompt encoding appended."""
    if repeats == 0:
        return batch
    tail = empty.to(batch.crossattn).repeat(repeats, 1).expand(batch.crossattn.shape[0], -1, -1)
    return replace(batch, crossattn=torch.cat([batch.crossattn, tail], dim=1))


@dataclass
class GuidanceOutput:
    """One CFG call: the guided output plus the raw rows live previews and CFG++ need.

    ``x`` is the latent the UNet saw (after a pre-denoising blend); ``cond_out`` each image's
    first sub-prompt output; ``uncond_out`` the uncond rows, or the first sub-prompt's output
    where the uncond was skipped (A1111's fake uncond).
    """

    x: torch.Tensor
    sigma: torch.Tensor
    denoised: torch.Tensor
    cond_out: torch.Tensor
    uncond_out: torch.Tensor
    uncond_skipped: bool
    to_x0: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = field(repr=False)

    @property
    def cond_denoised(self) -> torch.Tensor:
        """x0 of each image's first sub-prompt (A1111's last_latent and "Prompt" preview)."""
        return self.to_x0(self.x, self.cond_out, self.sigma)

    @property
    def uncond_denoised(self) -> torch.Tensor | None:
        """x0 of the negative prompt; None when NGMS / skip-early skipped it."""
        return None if self.uncond_skipped else self.to_x0(self.x, self.uncond_out, self.sigma)


@dataclass(frozen=True)
class _Selected:
    """The conditioning rows of one call: flattened sub-prompts, their layout, the unconds."""

    parts: tuple[tuple[tuple[int, float], ...], ...]  # per image: (row in cond batch, weight)
    repeats: tuple[int, ...]
    cond: CondBatch
    uncond: CondBatch
    padded: str | None = None  # the padding infotext key (padding_applied), None when unpadded


def select_conds(conditioning: BatchConditioning, step: int) -> tuple[list[CondTensors], list, list[CondTensors]]:
    """Each sub-prompt's and negative prompt's variant for denoiser call ``step`` (ScheduledCond.at)."""
    rows: list[CondTensors] = []
    layout: list[tuple[tuple[int, float], ...]] = []
    for image in conditioning.cond:
        entries: list[tuple[int, float]] = []
        for scheduled, weight in image.parts:
            entries.append((len(rows), float(weight)))
            rows.append(scheduled.at(step))
        layout.append(tuple(entries))
    return rows, layout, [scheduled.at(step) for scheduled in conditioning.uncond]


class CFGDenoiser:
    """A1111's classifier-free guidance denoiser around an inner wrapper.

    Per call: cancel check; variant selection by the call counter; optional pre-blend; one
    UNet batch [each image repeated per AND sub-prompt, then the uncond rows] (two calls when
    cond and uncond token lengths differ); combine u + sum_k w_k * cond_scale * (c_k - u);
    optional post-blend. With NGMS (s_min_uncond) or skip_early_cond the uncond rows are
    dropped and the combine uses scale 1 with each image's first sub-prompt as uncond.
    """

    def __init__(
        self,
        inner,
        cancel: StopSignal,
        options: GuidanceOptions = GuidanceOptions(),
        blend: InpaintBlend | None = None,
    ) -> None:
        self.inner = inner
        self.cancel = cancel
        self.options = options
        self.blend = blend
        self.step = 0  # denoiser calls so far (A1111's call counter)
        self.last: GuidanceOutput | None = None
        self.padded: str | None = None  # the last call's padding (padding_applied), as A1111's flags
        self._cache: tuple[tuple, _Selected] | None = None
        self._plain: tuple[tuple, BatchConditioning] | None = None

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: BatchConditioning | torch.Tensor,
        cond_scale: float,
        s_min_uncond: float = 0.0,
        uncond: torch.Tensor | None = None,
        image_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.cancel.should_stop_sampling:
            raise SamplingInterrupted("interrupted" if self.cancel.interrupted else "skipped")
        selected = self._select(self._conditioning(cond, uncond), x.shape[0])
        self.padded = selected.padded
        if self.blend is not None and self.options.mask_before_denoising:
            x = self.blend(x)
        edit_scale = self._edit_guidance_scale(image_cond)
        if image_cond is not None and edit_scale is not None:
            skip = False
            cond_out, uncond_out, denoised = edit_guidance(self.inner, x, sigma, selected, image_cond, cond_scale,
                                                           edit_scale)
        else:
            skip = self._skip_uncond(sigma, s_min_uncond)
            cond_out, uncond_out = self._run(x, sigma, selected, skip, image_cond)
            denoised = combine(cond_out, uncond_out, selected.parts, 1.0 if skip else cond_scale)
        if self.blend is not None and not self.options.mask_before_denoising:
            denoised = self.blend(denoised)
        first = [parts[0][0] for parts in selected.parts]
        self.last = GuidanceOutput(x, sigma, denoised, _rows(cond_out, first), uncond_out, skip, self.inner.to_x0)
        self.step += 1
        return denoised

    def last_uncond(self) -> torch.Tensor:
        """The uncond output of the previous call (DDIM CFG++ steps along it)."""
        if self.last is None:
            raise RuntimeError("last_uncond() called before the first guidance call")
        return self.last.uncond_out

    def _conditioning(self, cond, uncond) -> BatchConditioning:
        """BatchConditioning as is; bare (B, tokens, C) tensors become single-part conditioning."""
        if isinstance(cond, BatchConditioning):
            return cond
        if not isinstance(cond, torch.Tensor) or not isinstance(uncond, torch.Tensor):
            raise TypeError(
                f"cond must be a BatchConditioning, or cond and uncond tensors; got {type(cond).__name__}"
                f" and {type(uncond).__name__}"
            )
        key = (id(cond), id(uncond))
        if self._plain is None or self._plain[0] != key:
            self._plain = (key, BatchConditioning.plain(cond, uncond))
        return self._plain[1]

    def _select(self, conditioning: BatchConditioning, batch: int) -> _Selected:
        """This call's rows, stacked; reused while the selected variants stay the same objects."""
        if len(conditioning.cond) != batch or len(conditioning.uncond) != batch:
            raise ValueError(
                f"conditioning has {len(conditioning.cond)} prompts and {len(conditioning.uncond)} negative"
                f" prompts for a batch of {batch}"
            )
        rows, layout, unconds = select_conds(conditioning, self.step)
        key = tuple(id(r) for r in rows) + tuple(id(u) for u in unconds) + tuple(tuple(p) for p in layout)
        if self._cache is None or self._cache[0] != key:
            repeats = tuple(len(parts) for parts in layout)
            negatives = replace(CondBatch.stack(unconds), uncond_rows=len(unconds))
            cond = CondBatch.stack(rows)
            padded = padding_applied(cond, negatives, self.options)
            cond, negatives = pad_cond_pair(cond, negatives, self.options)
            stacked = _Selected(tuple(layout), repeats, cond, negatives, padded)
            self._cache = (key, stacked)
        return self._cache[1]

    def _edit_guidance_scale(self, image_cond: torch.Tensor | None) -> float | None:
        """image_cfg_scale when A1111's is_edit_model holds (an instruct-pix2pix image latent and
        image_cfg_scale != 1; the caller sets it only for 8-channel UNets, as A1111 does), else None."""
        scale = self.options.image_cfg_scale
        return scale if image_cond is not None and scale is not None and scale != 1.0 else None

    def _skip_uncond(self, sigma: torch.Tensor, s_min_uncond: float) -> bool:
        """skip_early_cond while step / total_steps <= it; else NGMS below s_min_uncond on odd
        calls (every call with s_min_uncond_all). For timestep samplers sigma is the timestep."""
        opts = self.options
        if opts.skip_early_cond != 0 and self.step / opts.total_steps <= opts.skip_early_cond:
            return True
        odd_or_all = self.step % 2 == 1 or opts.s_min_uncond_all
        return bool(odd_or_all and s_min_uncond > 0 and float(sigma[0]) < s_min_uncond)

    def _run(self, x, sigma, selected: _Selected, skip: bool, image_cond):
        """The UNet calls; returns (all cond rows' output, uncond rows' output or fake uncond)."""
        x_c, sigma_c = _repeat_rows(x, selected.repeats), _repeat_rows(sigma, selected.repeats)
        ic_c = None if image_cond is None else _repeat_rows(image_cond, selected.repeats)
        size = x.shape[0]
        if skip:
            cond_out = self._call(x_c, sigma_c, selected.cond, ic_c, size)
            return cond_out, _rows(cond_out, [parts[0][0] for parts in selected.parts])
        if selected.cond.tokens != selected.uncond.tokens:
            return self._call(x_c, sigma_c, selected.cond, ic_c, size), self.inner(
                x, sigma, selected.uncond, image_cond
            )
        both = self._call(
            torch.cat([x_c, x]),
            torch.cat([sigma_c, sigma]),
            selected.cond.cat(selected.uncond),
            _cat_opt(ic_c, image_cond),
            size,
        )
        return both[: x_c.shape[0]], both[x_c.shape[0] :]

    def _call(self, x, sigma, cond: CondBatch, image_cond, size: int) -> torch.Tensor:
        """One UNet call over all rows; with batch_cond_uncond off, calls of `size` rows (the
        image count) in order, as A1111 does to save memory (same numbers up to float noise)."""
        if self.options.batch_cond_uncond or x.shape[0] <= size or sigma.ndim == 0:
            return self.inner(x, sigma, cond, image_cond)
        outs = []
        for start in range(0, x.shape[0], size):
            stop = start + size
            part_ic = None if image_cond is None else image_cond[start:stop]
            outs.append(self.inner(x[start:stop], sigma[start:stop], cond.rows(start, stop), part_ic))
        return torch.cat(outs)


def edit_guidance(
    inner, x, sigma, selected: _Selected, image_cond: torch.Tensor, cond_scale: float, image_scale: float
):
    """InstructPix2Pix guidance (A1111's combine_denoised_for_edit_model): three row blocks,
    (prompt, image), (negative, image), (negative, zero image); denoised = u + cfg * (c - i) +
    image_cfg * (i - u). AND sub-prompts are refused, as A1111 does. Returns (cond rows,
    uncond rows, denoised)."""
    if any(len(parts) != 1 for parts in selected.parts):
        raise ValueError("AND is not supported for InstructPix2Pix checkpoints (unless image_cfg_scale is 1.0)")
    rows = [parts[0][0] for parts in selected.parts]
    cond = CondBatch(
        selected.cond.crossattn[rows], None if selected.cond.vector is None else selected.cond.vector[rows]
    )
    blank = torch.zeros_like(image_cond)
    if cond.tokens == selected.uncond.tokens:
        out = inner(
            torch.cat([x, x, x]),
            torch.cat([sigma, sigma, sigma]),
            cond.cat(selected.uncond).cat(selected.uncond),
            torch.cat([image_cond, image_cond, blank]),
        )
        out_cond, out_image, out_uncond = out.chunk(3)
    else:
        out_cond = inner(x, sigma, cond, image_cond)
        out_image, out_uncond = inner(
            torch.cat([x, x]),
            torch.cat([sigma, sigma]),
            selected.uncond.cat(selected.uncond),
            torch.cat([image_cond, blank]),
        ).chunk(2)
    denoised = out_uncond + cond_scale * (out_cond - out_image) + image_scale * (out_image - out_uncond)
    return out_cond, out_uncond, denoised


def _repeat_rows(v: torch.Tensor, repeats: tuple[int, ...]) -> torch.Tensor:
    """Row i repeated repeats[i] times (each image once per AND sub-prompt)."""
    if all(r == 1 for r in repeats):
        return v
    return torch.repeat_interleave(v, torch.tensor(repeats, device=v.device), dim=0)


def _rows(v: torch.Tensor, rows: list[int]) -> torch.Tensor:
    if rows == list(range(v.shape[0])):
        return v
    return v[torch.tensor(rows, device=v.device)]


def _cat_opt(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return None
    if b is None:
        raise ValueError("image conditioning for the cond rows but not the uncond rows")
    return torch.cat([a, b])


def combine(
    cond_out: torch.Tensor, uncond_out: torch.Tensor, parts: Sequence[Sequence[tuple[int, float]]], scale: float
) -> torch.Tensor:
    """u_i + sum_k (c_ik - u_i) * (w_k * scale), in A1111's order (weights not normalised)."""
    weights = {w for image in parts for _, w in image}
    if all(len(image) == 1 for image in parts) and len(weights) == 1:
        factor = weights.pop() * scale
        return uncond_out + (_rows(cond_out, [image[0][0] for image in parts]) - uncond_out) * factor
    denoised = torch.clone(uncond_out)
    for i, image in enumerate(parts):
        for row, weight in image:
            denoised[i] += (cond_out[row] - uncond_out[i]) * (weight * scale)
    return denoised

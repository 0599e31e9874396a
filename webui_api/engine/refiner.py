"""A1111's refiner switch and the other models a job may sample with (hires checkpoint).

The refiner (`refiner_checkpoint` + `refiner_switch_at`) takes over *inside* one sampler run:
at the first denoiser call whose progress ratio reaches the threshold, the CFG denoiser gets
the refiner's model wrapper and conditioning re-encoded with the refiner's own text encoders
(the SDXL refiner: OpenCLIP-G plus aesthetic-score time ids), while the sampler keeps its x,
its sigmas, its noise and its multistep history. The ratio is A1111's: the index of the σ-table
entry nearest to the call's σ, as (999 - t) / 1000 (a timestep sampler's "σ" already is t), or
call counter / total_steps with the `refiner_switch_by_sample_steps` option.

`CompanionModels` holds the extra models of one job (refiner, hires checkpoint): loaded into
the engine's LRU next to the main model, given the job's VAE, tiling and LoRAs like the main
one, and put back (patches undone, parked in CPU RAM on GPU devices) when the job ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from webui_api.engine.attention import apply_attention_upcast
from webui_api.engine.cond_types import BatchConditioning
from webui_api.engine.denoiser import CFGDenoiser, PaddingRecord, make_inner
from webui_api.engine.latents import decode_latents
from webui_api.engine.loading.discovery import closest_checkpoint_match
from webui_api.engine.models import CheckpointInfo, LoadedModel
from webui_api.engine.networks import PassNetworks
from webui_api.engine.pipeline import (
    BatchSpec,
    SamplerPlan,
    SamplingHooks,
    SamplingStart,
    batch_conditioning,
    batch_images,
    check_job,
    job_batches,
    resolve_plan,
    sample_batch,
)
from webui_api.engine.tiling import apply_tiling
from webui_api.errors import NotFound
from webui_api.jobs import GeneratedImage, GenerationJob, JobResult
from webui_api.progress import CancelToken, RunObserver

HIRES_REFINER_PASSES = ("first pass", "second pass", "both passes")  # option hires_fix_refiner_pass
TABLE_SIZE = 1000  # training timesteps: the ratio is (999 - t) / 1000


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def closest_checkpoint(checkpoints: Sequence[CheckpointInfo], name: str) -> CheckpointInfo:
    """A1111's get_closet_checkpoint_match (see discovery.closest_checkpoint_match); nothing found
    is A1111's "Could not find checkpoint with name ..." (a 404 here, not A1111's 500)."""
    found = closest_checkpoint_match(checkpoints, name)
    if found is None:
        message = f"Could not find checkpoint with name {name}"
        raise NotFound(message, errors=message)
    return found


def short_title(info: CheckpointInfo) -> str:
    """A1111's short_title (the infotext's "Refiner" / "Hires checkpoint"): the file's stem,
    plus " [hash]" once the file is hashed."""
    stem = os.path.splitext(os.path.basename(info.filename))[0]
    return f"{stem} [{info.hash}]" if info.hash else stem


# ---------------------------------------------------------------------------
# When to switch
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SwitchPoint:
    """The threshold of one sampler run: `switch_at` against A1111's completed ratio.

    `total_steps` is A1111's launch_sampling total (the run's step count, doubled for
    second-order samplers); it only matters with `by_steps`."""

    switch_at: float
    by_steps: bool = False
    total_steps: int = 1


def completed_ratio(point: SwitchPoint, step: int, sigma: torch.Tensor, table: torch.Tensor | None) -> float:
    """How far sampling is, as A1111's apply_refiner measures it. `table` is the model
    wrapper's σ table (None for timestep samplers, whose σ argument is the timestep)."""
    if point.by_steps:
        return step / max(point.total_steps, 1)
    top = torch.max(sigma).detach().float().cpu()
    timestep = int(top) if table is None else int(torch.argmin(torch.abs(table.cpu() - top)))
    return (TABLE_SIZE - 1 - timestep) / TABLE_SIZE


def is_due(point: SwitchPoint, step: int, sigma: torch.Tensor, table: torch.Tensor | None) -> bool:
    return completed_ratio(point, step, sigma, table) >= point.switch_at


# ---------------------------------------------------------------------------
# The companion models of a job
# ---------------------------------------------------------------------------


class CompanionSource(Protocol):
    """What companion models need from the engine (the facade's Engine)."""

    @property
    def device(self) -> torch.device: ...

    @property
    def policy(self) -> Any: ...  # engine.device.DevicePolicy: its transfers park companions

    def checkpoints(self) -> list[CheckpointInfo]: ...

    def companion(self, info: CheckpointInfo) -> LoadedModel: ...

    def apply_vae(self, model: LoadedModel, job: GenerationJob) -> Any: ...

    def upscaler_catalog(self) -> Any: ...


@dataclass
class CompanionModels:
    """The extra models a job samples with, prepared like its main model.

    `engine` is the Engine (see CompanionSource); `networks` the job's
    PassNetworks (A1111 applies a prompt's LoRAs to whatever model samples, so companions are
    attached to it leniently: a LoRA with no layer in this model, e.g. the SDXL refiner, is
    skipped, as A1111 does; the engine restores them). Everything else applied here is undone
    by `close`, which the engine calls when the job ends, failed or not."""

    engine: CompanionSource
    job: GenerationJob
    main: LoadedModel
    networks: PassNetworks | None = None
    _ready: dict[str, LoadedModel] = field(default_factory=dict)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def resolve(self, name: str) -> CheckpointInfo:
        return closest_checkpoint(self.engine.checkpoints(), name)

    def get(self, info: CheckpointInfo) -> LoadedModel:
        """The model for `info` on the device, with the job's VAE, tiling and LoRAs."""
        if info.filename == self.main.info.filename:
            return self.main
        if info.filename not in self._ready:
            model = self.engine.companion(info)
            self.engine.apply_vae(model, self.job)
            self._undo.append(apply_tiling(model, self.job.tiling).restore)
            self._undo.append(apply_attention_upcast(model, self.job.engine_options.upcast_attn).restore)
            if self.networks is not None:
                self.networks.attach(model, strict=False)
            self._ready[info.filename] = model
        return self._ready[info.filename]

    def close(self) -> None:
        """Undo every patch and park the companions in CPU RAM on GPU devices."""
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if self.engine.device.type != "cpu":
            for model in self._ready.values():
                model.move_to(torch.device("cpu"), self.engine.policy.transfers.move)
        self._ready.clear()


def companion_count(job: GenerationJob) -> int:
    """How many models besides the main one a job may hold at once (the LRU must fit them)."""
    hires = job.hires is not None and getattr(job.hires, "checkpoint_title", None) is not None
    return int(job.refiner is not None) + int(hires)


# ---------------------------------------------------------------------------
# The refiner of a job and the switch inside one sampler run
# ---------------------------------------------------------------------------


@dataclass
class RefinerRun:
    """One job's refiner: which checkpoint, when, and what happened (for the infotext).

    `current` is the model that last sampled in the running pass: the refiner after a switch,
    so decoding (and the hires pixel path) uses its VAE, as A1111's shared model would."""

    info: CheckpointInfo
    switch_at: float
    models: CompanionModels
    by_steps: bool = False
    hires_pass_option: str = "second pass"
    infotext: dict[str, Any] = field(default_factory=dict)
    current: LoadedModel | None = None

    def allowed(self, is_hires: bool, hires_enabled: bool) -> bool:
        """A1111's hires_fix_refiner_pass: with hires fix on, the refiner runs in the first,
        the second (default) or both passes."""
        if not hires_enabled:
            return True
        option = self.hires_pass_option
        return not ((option == "first pass" and is_hires) or (option == "second pass" and not is_hires))

    def record_switch(self, model: LoadedModel, hires_enabled: bool) -> None:
        """The infotext A1111 writes on a switch (Hires refiner only for a non-default pass)."""
        self.current = model
        if hires_enabled and self.hires_pass_option != "second pass":
            self.infotext["Hires refiner"] = self.hires_pass_option
        self.infotext["Refiner"] = short_title(model.info)
        self.infotext["Refiner switch at"] = self.switch_at
        if self.by_steps:
            self.infotext["Refiner switch by sampling steps"] = True


def refiner_run(job: GenerationJob, models: CompanionModels) -> RefinerRun | None:
    """The job's refiner resolved against the catalog (unknown names fail before sampling)."""
    if job.refiner is None:
        return None
    option = job.engine_options.hires_fix_refiner_pass
    if option not in HIRES_REFINER_PASSES:
        option = "second pass"
    return RefinerRun(
        info=models.resolve(job.refiner.checkpoint_title),
        switch_at=float(job.refiner.switch_at),
        models=models,
        by_steps=job.engine_options.refiner_switch_by_sample_steps,
        hires_pass_option=option,
    )


class RefinerSwitch:
    """What the sampler calls instead of the CFG denoiser while a refiner may take over.

    Before the switch it passes every call through; at the first call that is due it loads
    the refiner, gives the CFG denoiser the refiner's model wrapper and swaps in the refiner's
    conditioning for this and every later call. The CFG denoiser's call counter, the sampler's
    state and the schedule are untouched. A 4-channel refiner gets no inpainting image_cond."""

    def __init__(
        self,
        cfg: CFGDenoiser,
        run: RefinerRun,
        point: SwitchPoint,
        conditioning_for: Callable[[LoadedModel], BatchConditioning],
        kind: str,
        on_switch: Callable[[LoadedModel], None],
    ) -> None:
        self.cfg = cfg
        self.run = run
        self.point = point
        self.conditioning_for = conditioning_for
        self.kind = kind
        self.on_switch = on_switch
        self.table = getattr(cfg.inner, "sigmas", None) if kind != "timesteps" else None
        self.cond: BatchConditioning | None = None
        self.drop_image_cond = False

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        if self.cond is None and is_due(self.point, self.cfg.step, sigma, self.table):
            self._switch()
        if self.cond is not None:
            extra["cond"] = self.cond
            if self.drop_image_cond:
                extra.pop("image_cond", None)
        return self.cfg(x, sigma, **extra)

    def _switch(self) -> None:
        """The refiner's fresh model wrapper carries no ControlNet hook: units act on the base
        model's calls only, as with the extension, whose hook sits on the base UNet (and whose
        ControlNets match the base architecture, not e.g. the SDXL refiner's widths)."""
        refiner = self.run.models.get(self.run.info)
        self.cfg.inner = make_inner(refiner, self.kind)
        self.cond = self.conditioning_for(refiner)
        self.drop_image_cond = refiner.unet_in_channels == refiner.latent_channels
        self.on_switch(refiner)

    def last_uncond(self) -> torch.Tensor:
        """DDIM CFG++ reads the previous call's uncond output through its model."""
        return self.cfg.last_uncond()


@dataclass(frozen=True)
class PassContext:
    """One sampler pass as the refiner sees it: its job, plan, whether it is a hires
    second pass, how many steps the sampler launches with, and how conditioning is built."""

    job: GenerationJob
    plan: SamplerPlan
    launch_steps: int
    is_hires: bool = False
    hires_enabled: bool = False
    conditioning: Callable[[LoadedModel, BatchSpec], BatchConditioning] | None = None


def pass_conditioning(ctx: PassContext) -> Callable[[LoadedModel, BatchSpec], BatchConditioning]:
    if ctx.conditioning is not None:
        return ctx.conditioning
    return lambda model, batch: batch_conditioning(model, ctx.job, ctx.plan, batch)


def refiner_hooks(run: RefinerRun | None, ctx: PassContext, main: LoadedModel) -> SamplingHooks:
    """The hooks one pass samples with: its conditioning and, when the refiner may run in
    this pass (and is not the pass's own model), the switch."""
    conditioning = pass_conditioning(ctx)
    if run is None or run.info.filename == main.info.filename or not run.allowed(ctx.is_hires, ctx.hires_enabled):
        return SamplingHooks(conditioning=ctx.conditioning)
    steps = ctx.plan.sampler.total_steps(ctx.launch_steps)
    point = SwitchPoint(run.switch_at, run.by_steps, steps)

    def wrap(cfg: CFGDenoiser, batch: BatchSpec, begin: SamplingStart) -> RefinerSwitch:
        return RefinerSwitch(
            cfg, run, point, lambda model: conditioning(model, batch), ctx.plan.sampler.kind,
            lambda model: run.record_switch(model, ctx.hires_enabled),
        )

    return SamplingHooks(conditioning=ctx.conditioning, wrap_denoiser=wrap)


def sample_pass(
    main: LoadedModel,
    run: RefinerRun | None,
    ctx: PassContext,
    batch: BatchSpec,
    observer: RunObserver,
    cancel: CancelToken,
    start: Any = None,
    padding: PaddingRecord | None = None,
) -> tuple[torch.Tensor, LoadedModel]:
    """One batch of one pass; returns its latents and the model that finished it (the
    refiner after a switch, else `main`); `padding` collects the pass's cond padding."""
    if run is not None:
        run.current = None
    hooks = refiner_hooks(run, ctx, main)
    latents = sample_batch(main, ctx.job, ctx.plan, batch, observer, cancel, start, hooks, padding, ctx.is_hires)
    finished = run.current if run is not None and run.current is not None else main
    return latents, finished


# ---------------------------------------------------------------------------
# txt2img with a refiner
# ---------------------------------------------------------------------------


def run_txt2img_refined(
    model: LoadedModel, job: GenerationJob, observer: RunObserver, cancel: CancelToken, models: CompanionModels
) -> JobResult:
    """txt2img batch by batch as pipeline.run_txt2img, with the refiner switch in each batch
    (every batch starts on the main model again, as A1111 reloads it per iteration) and each
    batch decoded by the model that finished it."""
    check_job(job)
    plan = resolve_plan(job)
    run = refiner_run(job, models)
    ctx = PassContext(job, plan, launch_steps=job.sampling.steps)
    auto_upcast = job.engine_options.auto_vae_precision
    padding = PaddingRecord()
    images: list[GeneratedImage] = []
    with torch.inference_mode():
        for batch in job_batches(job, observer, cancel):
            latents, finished = sample_pass(model, run, ctx, batch, observer, cancel, padding=padding)
            images += batch_images(batch, decode_latents(finished, latents, auto_upcast))
            observer.batch_finished(batch.index)
    extras = dict(run.infotext) if run is not None else {}
    return JobResult(images=images, interrupted=cancel.interrupted, extra_generation_params=extras,
                     cond_padding=padding.infotext())


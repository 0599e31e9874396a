"""Cross-request batching: several txt2img jobs sampled as one UNet batch.

The jobs already share everything that is not per image (webui_api.batching.batch_key). What
stays per job is exactly what A1111 keeps per image: the conditioning rows (prompts, negative
prompts, AND parts, schedules), the ImageRNG (seeds, subseeds, ENSD, seed resize) and the
sampler's step noise (each job's own ImageRNG or Brownian trees). The combined batch is the
jobs' batches concatenated in order; the sampler runs once over it; the final latents are split
back and decoded per job.

Why the images equal the ones each job would give alone: the sampler math is per row, the
step noise is drawn from each job's own generators in the same call order, and guidance
combines each image with its own rows. Two things are not per row by nature and are handled:

- Token padding: the CFG denoiser pads every conditioning row of a call to the longest one
  (A1111's stack_conds) and runs cond and uncond in one UNet call only when their lengths
  agree. Jobs are therefore merged only when their prompts (every schedule variant and AND
  part) encode to one common length and their negatives to another; the rest run in separate
  sub-batches (`token_groups`).
- UNet kernels: a row's result can depend on how many rows the call has (BLAS picks kernels
  by matrix size). Every UNet call is therefore made with one fixed number of rows
  (`RowChunks`), lone job and batch alike.

Cancellation: interrupting one job stops nothing else. Its latent is taken from the step at
which the interrupt was seen (A1111's last prompt-only x0 estimate) and decoded when the batch
ends; the batch stops early only when every job in it was interrupted or skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from webui_api.engine.cond_types import BatchConditioning, ScheduledCond
from webui_api.engine.denoiser import CFGDenoiser, CondBatch, PaddingRecord, SamplingInterrupted, make_inner
from webui_api.engine.latents import decode_latents
from webui_api.engine.models import LoadedModel
from webui_api.engine.pipeline import (
    BatchSpec,
    SamplerPlan,
    SamplingStart,
    SamplingTrace,
    batch_conditioning,
    batch_images,
    check_job,
    guidance_options,
    initial_latent,
    make_image_rng,
    make_noise_sampler,
    make_schedule,
    preview_source,
    resolve_plan,
    sampler_kwargs,
)
from webui_api.engine.previews import PreviewSource, SideStreams, preview_kind
from webui_api.engine.token_merging import token_merging
from webui_api.jobs import GenerationJob, JobResult
from webui_api.progress import CancelToken, RunObserver


@dataclass
class Member:
    """One job inside a combined batch: its rows are [start, start + size)."""

    job: GenerationJob
    cancel: CancelToken
    spec: BatchSpec
    conditioning: BatchConditioning
    start: int = 0
    stopped_latent: torch.Tensor | None = field(default=None, repr=False)

    @property
    def rows(self) -> slice:
        return slice(self.start, self.start + self.job.batch_size)


class GroupCancel:
    """The combined batch's cancel token, as the CFG denoiser reads it: sampling stops only
    when every member wants to stop (one job's interrupt must not end the others)."""

    def __init__(self, tokens: Sequence[CancelToken]) -> None:
        self.tokens = tuple(tokens)

    @property
    def should_stop_sampling(self) -> bool:
        return all(token.should_stop_sampling for token in self.tokens)

    @property
    def interrupted(self) -> bool:
        return all(token.interrupted for token in self.tokens)


# ---------------------------------------------------------------------------
# Fixed-size UNet calls
# ---------------------------------------------------------------------------


def _pad_rows(v: torch.Tensor, rows: int) -> torch.Tensor:
    """Lengthen dim 0 to `rows` by repeating the last row."""
    if v.shape[0] >= rows:
        return v
    return torch.cat([v, v[-1:].expand(rows - v.shape[0], *v.shape[1:])])


def _chunk(v: torch.Tensor, part: slice, rows: int) -> torch.Tensor:
    return _pad_rows(v[part], rows)


def _chunk_optional(v: torch.Tensor | None, part: slice, rows: int) -> torch.Tensor | None:
    return None if v is None else _chunk(v, part, rows)


class RowChunks:
    """An inner wrapper that calls the UNet with exactly `rows` rows, every time.

    BLAS and oneDNN pick kernels by matrix size, so a row's result can change with the number
    of rows in the call: on the CPU measured, 1, 2-3, 4-15 and 16 rows are four different
    kernel classes (scripts/bench_batching.py --probe). A batch of jobs and the same job alone
    therefore only agree when their UNet calls have the same shape. Splitting every call into
    chunks of `rows` (the last one padded with copies of its last row, dropped afterwards)
    gives every call, lone or batched, one shape. What remains is that a row's result must not
    depend on its position in a same-shaped call: measured true for every size with one thread,
    and with two threads for 2-4, 8 and 12-16 rows but not 5-7 or 9-11 (MKL splits the rows
    between threads unevenly), hence the multiple-of-4 default (settings.unet_rows)."""

    def __init__(self, inner, rows: int) -> None:
        if rows < 1:
            raise ValueError(f"UNet call rows must be >= 1, got {rows}")
        self.inner = inner
        self.rows = rows

    def __call__(self, x, sigma, cond, image_cond=None) -> torch.Tensor:
        total = x.shape[0]
        if total == self.rows:
            return self.inner(x, sigma, cond, image_cond)
        cond = CondBatch.of(cond)
        outs = []
        for start in range(0, total, self.rows):
            part = slice(start, min(start + self.rows, total))
            chunk_cond = CondBatch(
                _chunk(cond.crossattn, part, self.rows), _chunk_optional(cond.vector, part, self.rows)
            )
            out = self.inner(_chunk(x, part, self.rows), _chunk(sigma, part, self.rows), chunk_cond,
                             _chunk_optional(image_cond, part, self.rows))
            outs.append(out[: part.stop - part.start])
        return torch.cat(outs)

    def to_x0(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.inner.to_x0(x, out, sigma)


# ---------------------------------------------------------------------------
# Grouping by token length
# ---------------------------------------------------------------------------


def _lengths(scheduled: ScheduledCond) -> set[int]:
    return {int(tensors.crossattn.shape[0]) for _, tensors in scheduled.variants}


def token_signature(conditioning: BatchConditioning) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(every prompt row length, every negative row length) a job's conditioning can produce."""
    cond = set().union(*(_lengths(s) for image in conditioning.cond for s, _ in image.parts))
    uncond = set().union(*(_lengths(s) for s in conditioning.uncond))
    return tuple(sorted(cond)), tuple(sorted(uncond))


def token_groups(conditionings: Sequence[BatchConditioning]) -> list[list[int]]:
    """Indices of jobs that may share UNet calls: equal single prompt and negative lengths.

    A job whose own rows have several lengths is padded per call by its own rows only, so it
    gets a group of its own (merging could change its padding)."""
    groups: dict[tuple, list[int]] = {}
    for index, conditioning in enumerate(conditionings):
        signature = token_signature(conditioning)
        uniform = len(signature[0]) == 1 and len(signature[1]) == 1
        groups.setdefault(signature if uniform else ("alone", index), []).append(index)
    return list(groups.values())


def merged_conditioning(members: Sequence[Member]) -> BatchConditioning:
    """The members' conditioning rows concatenated in batch order."""
    return BatchConditioning(
        cond=tuple(image for m in members for image in m.conditioning.cond),
        uncond=tuple(row for m in members for row in m.conditioning.uncond),
    )


# ---------------------------------------------------------------------------
# One combined sampler run
# ---------------------------------------------------------------------------


def check_same_plan(jobs: Sequence[GenerationJob]) -> None:
    """The caller groups by batch key; this guards the engine against a wrong grouping."""
    first = jobs[0]
    for job in jobs[1:]:
        same = (job.sampling, job.width, job.height, job.clip_skip, job.n_iter) == (
            first.sampling, first.width, first.height, first.clip_skip, first.n_iter)
        if not same or job.n_iter != 1 or job.kind != "txt2img":
            raise ValueError(
                "jobs in one batch must be single-iteration txt2img jobs with the same sampling, size and clip "
                f"skip; got {job.sampling} {job.width}x{job.height} n_iter={job.n_iter} beside {first.sampling} "
                f"{first.width}x{first.height} n_iter={first.n_iter}"
            )


def combined_noise_sampler(samplers: Sequence[Callable]) -> Callable:
    """Each job's own step noise, concatenated in batch order (same draws, same order)."""
    return lambda sigma, sigma_next: torch.cat([draw(sigma, sigma_next) for draw in samplers])


def stop_watcher(members: Sequence[Member], cfg: CFGDenoiser) -> Callable[[], None]:
    """Called after every step: a member interrupted or skipped since keeps the x0 estimate
    the alone run would have returned (the last prompt-only x0 of its rows)."""

    def watch() -> None:
        for member in members:
            if member.stopped_latent is None and member.cancel.should_stop_sampling and cfg.last is not None:
                member.stopped_latent = cfg.last.cond_denoised[member.rows].clone()

    return watch


def sample_members(
    model: LoadedModel, plan: SamplerPlan, members: Sequence[Member], observer: RunObserver, unet_rows: int,
    padding: PaddingRecord,
) -> torch.Tensor:
    """The sampler once over the members' rows; returns the final latents of all rows. The
    members share one token signature (token_groups), so the padding `padding` collects is
    each member's own, as it would be alone."""
    job = members[0].job
    inner = make_inner(model, plan.sampler.kind)
    schedule = make_schedule(model, job, plan, inner)
    rngs = [make_image_rng(model, m.job, m.spec) for m in members]
    noise = torch.cat([rng.first() for rng in rngs])
    begin = SamplingStart(schedule, initial_latent(job, plan, noise, schedule))
    cfg = CFGDenoiser(RowChunks(inner, unet_rows), GroupCancel([m.cancel for m in members]),
                      guidance_options(job, plan, model))
    trace = SamplingTrace(x0=begin.x)
    watch = stop_watcher(members, cfg)
    latest = preview_source(job, cfg, trace)
    preview = PreviewSource.of_model(model, preview_kind(job.engine_options, model), latest, SideStreams())

    def callback(info: dict) -> None:
        trace.x0 = info["denoised"]
        watch()
        observer.sampling_step(int(info["i"]), job.sampling.steps, preview)

    draws = [
        make_noise_sampler(model, m.job, plan, m.spec, rng, schedule) for m, rng in zip(members, rngs, strict=True)
    ]
    kwargs = sampler_kwargs(job, plan, schedule, inner, combined_noise_sampler(draws), begin.model_interval)
    extra_args = {"cond": merged_conditioning(members), "cond_scale": job.sampling.cfg_scale,
                  "s_min_uncond": job.sampling.s_min_uncond}
    function = plan.sampler.function
    if function is None:  # resolve_sampler refuses unimplemented samplers before a job is built
        raise ValueError(f"sampler {plan.sampler.name!r} is not implemented")
    try:  # the members share their options (batch key), so one ToMe ratio fits them all
        with token_merging(model.unet, job.engine_options.token_merging_for(job.kind)):
            return function(
                cfg, begin.x, schedule, extra_args=extra_args, callback=callback, disable=True, **kwargs
            )
    except SamplingInterrupted:
        watch()
        return trace.x0 if cfg.last is None else cfg.last.cond_denoised
    finally:
        padding.note(cfg)


def place(members: Sequence[Member]) -> None:
    """Give each member its row range in the combined batch (batch order = job order)."""
    start = 0
    for member in members:
        member.start = start
        start += member.job.batch_size


def decode_member(model: LoadedModel, member: Member, latents: torch.Tensor, padding: PaddingRecord) -> JobResult:
    """One job's images from its rows (or from the latent kept when it was interrupted)."""
    rows = member.stopped_latent if member.stopped_latent is not None else latents[member.rows]
    auto_upcast = member.job.engine_options.auto_vae_precision
    images = batch_images(member.spec, decode_latents(model, rows, auto_upcast))
    return JobResult(images=images, interrupted=member.cancel.interrupted, cond_padding=padding.infotext())


def run_group(
    model: LoadedModel, plan: SamplerPlan, members: list[Member], observer: RunObserver, unet_rows: int
) -> list[JobResult]:
    """One combined sampler run for members whose rows may share UNet calls."""
    place(members)
    padding = PaddingRecord()
    latents = sample_members(model, plan, members, observer, unet_rows, padding)
    return [decode_member(model, member, latents, padding) for member in members]


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


def run_txt2img_batched(
    model: LoadedModel,
    jobs: Sequence[GenerationJob],
    observer: RunObserver,
    cancels: Sequence[CancelToken],
    unet_rows: int,
) -> list[JobResult]:
    """Generate several single-iteration txt2img jobs together; results in job order.

    Jobs whose prompts encode to different token lengths run as separate sub-batches, one after
    the other, so no job's padding changes. The observer sees the whole batch as one job.
    Every UNet call has exactly `unet_rows` rows (RowChunks); a server that batches runs its
    lone batchable jobs through here too, with the same call size."""
    if len(jobs) != len(cancels) or not jobs:
        raise ValueError(
            f"need one cancel token per job and at least one job; got {len(jobs)} jobs, {len(cancels)} tokens"
        )
    for job in jobs:
        check_job(job)
    check_same_plan(jobs)
    plan = resolve_plan(jobs[0])
    results: list[JobResult | None] = [None] * len(jobs)
    with torch.inference_mode():
        for cancel in cancels:
            cancel.clear_skip()
        observer.batch_started(0, 1)
        members = [_member(model, plan, job, cancel) for job, cancel in zip(jobs, cancels, strict=True)]
        for group in token_groups([m.conditioning for m in members]):
            for index, result in zip(
                group, run_group(model, plan, [members[i] for i in group], observer, unet_rows), strict=True
            ):
                results[index] = result
        observer.batch_finished(0)
    return [result for result in results if result is not None]


def _member(model: LoadedModel, plan: SamplerPlan, job: GenerationJob, cancel: CancelToken) -> Member:
    spec = BatchSpec.of(job, 0)
    return Member(job=job, cancel=cancel, spec=spec, conditioning=batch_conditioning(model, job, plan, spec))

"""Helpers for the engine tests: a small job factory and a recording RunObserver."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from webui_api.engine_options import EngineOptions
from webui_api.jobs import GenerationJob, SamplingParams, SeedParams


def engine_options(options: Mapping[str, Any] | None) -> EngineOptions:
    """The typed options the job builder would resolve from these A1111 options (the
    request's `disable_extra_networks` may be given here too, for brevity)."""
    options = dict(options or {})
    disabled = bool(options.pop("disable_extra_networks", False))
    return EngineOptions.from_options(options, disable_extra_networks=disabled)


def sampling_params(sampler: str = "Euler", scheduler: str = "automatic", **fields: Any) -> SamplingParams:
    """SamplingParams for registry names, as the job builder resolves them (tests only)."""
    from samplers.registry import find_sampler, find_scheduler

    entry, schedule = find_sampler(sampler), find_scheduler(scheduler)
    if entry is None or schedule is None:
        raise ValueError(f"unknown sampler {sampler!r} or scheduler {scheduler!r}")
    return SamplingParams(sampler=entry, schedule=schedule, **{"eta": None, **fields})


def with_sampler(sampling: SamplingParams, sampler: str, **fields: Any) -> SamplingParams:
    """`sampling` with another sampler, by name (and other fields replaced)."""
    from samplers.registry import find_sampler

    entry = find_sampler(sampler)
    if entry is None:
        raise ValueError(f"unknown sampler {sampler!r}")
    return replace(sampling, sampler=entry, **fields)


def with_options(job: GenerationJob, options: Mapping[str, Any]) -> GenerationJob:
    """`job` with a new options snapshot and the engine options resolved from it."""
    return replace(job, options=dict(options), engine_options=engine_options(options))


def make_job(
    prompts=("a cat",),
    negative_prompts=None,
    seeds=(1,),
    subseeds=None,
    *,
    batch_size: int = 1,
    n_iter: int = 1,
    width: int = 64,
    height: int = 64,
    steps: int = 4,
    sampler: str = "Euler",
    scheduler: str = "automatic",
    cfg_scale: float = 7.0,
    options=None,
    **seed_kwargs,
) -> GenerationJob:
    """A small, fully resolved txt2img job (64x64, 4 steps) for fast tests."""
    count = batch_size * n_iter
    prompts = tuple(prompts) * (count // len(prompts))
    negatives = tuple(negative_prompts) if negative_prompts is not None else ("",) * count
    subseeds = tuple(subseeds) if subseeds is not None else tuple(range(1000, 1000 + count))
    return GenerationJob(
        kind="txt2img",
        prompts=prompts,
        negative_prompts=negatives,
        width=width,
        height=height,
        batch_size=batch_size,
        n_iter=n_iter,
        sampling=sampling_params(sampler, scheduler, steps=steps, cfg_scale=cfg_scale),
        seeds=SeedParams(seeds=tuple(seeds), subseeds=subseeds, **seed_kwargs),
        options=dict(options or {}),
        engine_options=engine_options(options),
    )


class RecordingObserver:
    """A RunObserver that records every call and can act on a given step."""

    def __init__(self, on_step=None, render_previews: bool = False) -> None:
        self.events: list[tuple] = []
        self.previews: list = []
        self.on_step = on_step
        self.render_previews = render_previews

    def batch_started(self, batch_no: int, batch_count: int) -> None:
        self.events.append(("batch_started", batch_no, batch_count))

    def sampling_step(self, step: int, total_steps: int, make_preview) -> None:
        self.events.append(("step", step, total_steps))
        if self.render_previews:
            self.previews.append(make_preview())
        if self.on_step is not None:
            self.on_step(step)

    def batch_finished(self, batch_no: int) -> None:
        self.events.append(("batch_finished", batch_no))

    def steps_of_batch(self, batch_no: int) -> list[int]:
        """The 0-based step numbers reported between batch_started(n) and batch_finished(n)."""
        steps, inside = [], False
        for event in self.events:
            if event[0] == "batch_started":
                inside = event[1] == batch_no
            elif event[0] == "step" and inside:
                steps.append(event[1])
        return steps

"""What every built-in script shares: the planning context, the worker handle, the output.

A script works in two halves, like a request does. `plan` runs before anything is queued
(off the event loop): it reads `script_args`, builds every GenerationJob it can with
job_builder, and refuses bad input with a 4xx. `execute` runs on the scheduler's worker as ONE
work item: it runs the jobs through a `ScriptWorker` (which keeps /progress counting across
jobs) and combines their images into a `ScriptOutput`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from ..engine.protocols import ModelFacts
from ..errors import ValidationFailed
from ..jobs import GenerationJob, JobResult
from ..styles import PromptStyle

if TYPE_CHECKING:
    from ..serving.script_budget import JobWork


@dataclass(frozen=True)
class ScriptContext:
    """Everything a script may consult while planning, besides the request and its args."""

    tab: str  # "txt2img" or "img2img"
    options: Mapping[str, Any]  # the request's per-job options (override_settings applied)
    styles: Sequence[PromptStyle]  # the styles the request needed (see webui_api.generation.prepare)
    checkpoints: Sequence[Any] = ()  # engine CheckpointInfo entries, in A1111's order
    upscaler_names: Sequence[str] = ("None", "Lanczos", "Nearest")  # /sdapi/v1/upscalers order
    vae_names: Sequence[str] = ()
    sampler_names: Sequence[str] = ()
    scheduler_labels: Sequence[str] = ()
    all_styles: Callable[[], Sequence[PromptStyle]] = tuple  # every style in styles.csv (read on demand)
    rng: random.Random = field(default_factory=random.Random)
    # The server's request guards applied to every planned job (size, steps, batch, prompt
    # length): a script line or axis cannot go beyond what a direct request may ask for.
    # The default applies the default limits, never none.
    check_job: Callable[[GenerationJob], None] = field(default=lambda job: _default_job_check(job))
    # The whole-script budget (serving.script_budget): every job the script will run is charged
    # here while planning, so a run over --max-script-images / --max-script-work is refused
    # before anything is queued. One budget per context (a context plans one request); the
    # default charges against the default limits, never none.
    charge: Callable[[JobWork], None] = field(default_factory=lambda: _default_budget().charge)

    def admit(self, job: GenerationJob) -> None:
        """A planned job that will run as built: the per-job guards, then the script budget."""
        from ..serving.script_budget import job_work

        self.check_job(job)
        self.charge(job_work(job))


@dataclass
class JobOutcome:
    """One finished job with what its infotexts need."""

    job: GenerationJob
    result: JobResult
    model_info: ModelFacts  # the checkpoint that ran it

    def infotexts(self) -> list[str]:
        from ..results import build_infotexts

        return build_infotexts(self.job, self.result, self.model_info)


class ScriptWorker(Protocol):
    """What `execute` may do on the worker thread."""

    @property
    def interrupted(self) -> bool: ...

    def run(self, job: GenerationJob) -> JobOutcome:
        """Run one txt2img or img2img job (by its kind), counting its batches in /progress."""

    def upscale(self, image: Any, upscaler: str, scale: float) -> Any:
        """Upscale a PIL image with a named upscaler of /sdapi/v1/upscalers."""


@dataclass
class OutputImage:
    """One image of the response: `infotext` goes into info.infotexts; `embed` says whether
    the encoded image carries it (A1111's grids and stitched images have no text chunk);
    `grid`, `seed` and `prompt` name the file when the request sets save_images."""

    image: Any
    infotext: str
    embed: bool = True
    grid: bool = False  # saved as a grid (grid-NNNN, grid_format) with save_images
    seed: int | None = None  # for the saved file's name
    prompt: str = ""


@dataclass
class ScriptOutput:
    """The script's Processed: images in response order and the info JSON's fields."""

    images: list[OutputImage]
    info: dict[str, Any]


@dataclass(frozen=True)
class ScriptRun:
    """A planned script: how many batches /progress counts, and the worker half."""

    job_count: int
    execute: Callable[[ScriptWorker], ScriptOutput]
    first_job: GenerationJob  # job_timestamp and preview settings of the whole run
    # every job that runs as planned (x/y/z cells, prompt lines), for what must be known before
    # queueing (the weights files they need); empty when the jobs are made while running (sd
    # upscale's tiles, which share first_job's settings)
    jobs: tuple[GenerationJob, ...] = ()


# --------------------------------------------------------------------------- helpers


def progress_units(job: GenerationJob) -> int:
    """How many /progress jobs one GenerationJob counts: one per batch, two with hires fix
    (A1111 doubles job_count for the second pass)."""
    return job.n_iter * (2 if job.hires is not None else 1)


def revalidated(request: Any, updates: Mapping[str, Any], script: str) -> Any:
    """The request with `updates` applied and every field checked again (sizes, steps, ...),
    so a value a script line or axis sets is refused exactly like the same value in a request."""
    data = {**request.model_dump(), **updates}
    if hasattr(request, "include_init_images"):
        data["include_init_images"] = request.include_init_images  # excluded from dumps
    try:
        return type(request).model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValidationFailed(f"script '{script}' made an invalid request: {problems}") from exc


def build_job(
    tab: str, request: Any, options: Mapping[str, Any], styles: Sequence[PromptStyle], rng: random.Random,
    guard: Callable[[GenerationJob], None] | None = None,
) -> GenerationJob:
    """job_builder's txt2img or img2img build, by tab, passed through the request guards
    (`guard`: the ScriptContext's check_job; None applies the default limits)."""
    from ..job_builder import build_img2img, build_txt2img

    job = (
        build_img2img(request, options, rng, styles)
        if tab == "img2img"
        else build_txt2img(request, options, rng, styles)
    )
    (guard or _default_job_check)(job)
    return job


def _default_budget() -> Any:
    from ..serving.script_budget import ScriptBudget, ScriptLimits

    return ScriptBudget(ScriptLimits())


def _default_job_check(job: GenerationJob) -> None:
    from ..serving.guards import RequestLimits, check_job

    check_job(job, RequestLimits())


def base_info(outcome: JobOutcome, request: Any, infotexts: list[str], index_of_first_image: int = 0) -> dict[str, Any]:
    """A1111's Processed.js() of one job, as a dict a script then adjusts to its own images."""
    from ..results import build_info

    text = build_info(outcome.job, outcome.result, outcome.model_info, infotexts, request, index_of_first_image)
    return json.loads(text)


def with_extra_params(outcome: JobOutcome, extra: Mapping[str, Any], first: bool = False) -> JobOutcome:
    """The outcome with more infotext keys (`first`: before the job's own, as keys a script set
    on `p` before processing come first in A1111's extra_generation_params)."""
    own = outcome.result.extra_generation_params
    merged = {**extra, **own} if first else {**own, **extra}
    return replace(outcome, result=replace(outcome.result, extra_generation_params=merged))

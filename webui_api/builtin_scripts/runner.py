"""A request's `script_name` script: its plan, the worker that runs its jobs on the engine,
its saved files and its response body.

Queueing the script (one work item for all its jobs) is the generation layer's
(webui_api.generation.scripts); this module knows nothing of the queue or of HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.protocols import GenerationEngine
from ..errors import NotImplementedFeature
from ..jobs import GenerationJob
from ..progress import CancelToken, RunObserver
from ..styles import PromptStyle
from ..weights.runtime import NeededWeights, job_weights, upscaler_weights
from .base import JobOutcome, ScriptContext, ScriptOutput, ScriptRun, progress_units

# Listed selectable scripts this server cannot run, with the reason the refusal gives.
UNSUPPORTED_SCRIPTS = {
    "controlnet m2m": "it runs ControlNet over the frames of a video, and video input is not supported"
}


def _planners() -> dict[str, Callable[[Any, ScriptContext], ScriptRun]]:
    from . import prompts_from_file, sd_upscale, xyz_plot

    return {
        prompts_from_file.TITLE: prompts_from_file.plan,
        sd_upscale.TITLE: sd_upscale.plan,
        xyz_plot.TITLE: xyz_plot.plan,
    }


def plan_script(request: Any, ctx: ScriptContext) -> ScriptRun:
    """Check the name for the tab (A1111's 422 "Script 'x' not found") and plan the script."""
    from ..job_builder import check_scripts

    check_scripts(request)
    reason = UNSUPPORTED_SCRIPTS.get(request.script_name.lower())
    if reason is not None:
        raise NotImplementedFeature(f"Script {request.script_name!r} is not supported: {reason}")
    return _planners()[request.script_name.lower()](request, ctx)


def script_context(runtime: Any, tab: str, options: Mapping[str, Any], styles: Sequence[PromptStyle]) -> ScriptContext:
    """The catalogs a script may consult, read now (the engine's catalog readers are safe off
    the worker thread)."""
    from samplers import registry

    from ..postprocess.upscale import UpscalerCatalog
    from ..styles import read_styles, style_files

    return ScriptContext(
        tab=tab,
        options=options,
        styles=styles,
        checkpoints=tuple(runtime.engine.checkpoints()),
        upscaler_names=tuple(UpscalerCatalog.from_settings(runtime.settings, options=options).names()),
        vae_names=tuple(vae.model_name for vae in runtime.engine.vaes()),
        sampler_names=tuple(s.name for s in registry.implemented_samplers()),
        scheduler_labels=tuple(s.label for s in registry.SCHEDULERS),
        all_styles=lambda: read_styles(style_files(runtime.settings)),
    )


def script_weights(request: Any, ctx: ScriptContext, settings: Any, planned: ScriptRun) -> NeededWeights:
    """Pinned weights a script run needs that are known before it runs (fetched off the
    worker): sd upscale's upscaler, and every planned job's hires upscaler and face restoration
    (a later prompt line or x/y/z cell may turn restore_faces on). Jobs that ask for the same
    files are looked up once."""
    from . import sd_upscale

    needed = NeededWeights()
    for job in {_weights_key(job): job for job in planned.jobs or (planned.first_job,)}.values():
        needed += job_weights(settings, job)
    if str(request.script_name).lower() == sd_upscale.TITLE:
        upscaler = sd_upscale.read_settings(request, ctx).upscaler
        needed += upscaler_weights(settings, planned.first_job.options, [upscaler])
    return needed


def _weights_key(job: GenerationJob) -> tuple[Any, ...]:
    """What job_weights reads from a job: jobs with equal keys need the same files."""
    hires = job.hires
    return (hires is not None and hires.latent_mode is None, hires.upscaler if hires is not None else None,
            bool(job.restore_faces), job.options.get("face_restoration_model"), job.options.get("show_progress_type"))


@dataclass
class OffsetObserver:
    """Forwards one job's progress calls with its batches numbered after the jobs before it,
    so /progress counts 1..job_count over the whole script."""

    target: RunObserver
    offset: int
    total: int

    def batch_started(self, batch_no: int, batch_count: int) -> None:
        self.target.batch_started(self.offset + batch_no, self.total)

    def sampling_step(self, step: int, total_steps: int, make_preview: Callable[[], Any]) -> None:
        self.target.sampling_step(step, total_steps, make_preview)

    def batch_finished(self, batch_no: int) -> None:
        self.target.batch_finished(self.offset + batch_no)


@dataclass
class EngineWorker:
    """The ScriptWorker on the worker thread: runs jobs on the engine, counting batches."""

    engine: GenerationEngine
    progress: RunObserver
    cancel: CancelToken
    total: int
    catalog: Any  # UpscalerCatalog
    restorer_for: Callable[[GenerationJob], Any] = lambda job: None  # face restorer of a restore_faces job
    batches_done: int = 0

    @property
    def interrupted(self) -> bool:
        return self.cancel.interrupted

    def run(self, job: GenerationJob) -> JobOutcome:
        observer = OffsetObserver(self.progress, self.batches_done, self.total)
        generate = self.engine.img2img if job.kind == "img2img" else self.engine.txt2img
        result = generate(job, observer, self.cancel, restore_faces=self.restorer_for(job))
        self.batches_done += progress_units(job)
        return JobOutcome(job, result, result.ran_on)

    def upscale(self, image: Any, upscaler: str, scale: float) -> Any:
        return self.catalog.upscale(image, upscaler, scale)


def script_response(request: Any, tab: str, output: ScriptOutput, options: Mapping[str, Any]) -> dict[str, Any]:
    """A1111's response: images in samples_format (text chunks only where A1111 writes them),
    the request echo (img2img without its images unless include_init_images), info JSON."""
    from ..postprocess.encode import encode_image_base64, encoding_options

    fmt = str(options.get("samples_format", "png")).lower()
    with_text = bool(options.get("enable_pnginfo", True))
    images = (
        [
            encode_image_base64(
                o.image, fmt, infotext=o.infotext if o.embed and with_text else None, **encoding_options(options)
            )
            for o in output.images
        ]
        if request.send_images
        else []
    )
    echoed = request
    if tab == "img2img" and not request.include_init_images:
        echoed = request.model_copy(update={"init_images": None, "mask": None})
    info = {**output.info, "infotexts": [o.infotext for o in output.images]}
    return {"images": images, "parameters": echoed.model_dump(), "info": json.dumps(info, default=lambda _: None)}


def save_outputs(output: ScriptOutput, tab: str, options: Mapping[str, Any], data_dir: Any) -> None:
    """save_images: the returned samples under the tab's samples folder (option samples_save)
    and the returned grids under its grids folder (option grid_save), named as A1111 names them.
    (A1111 also saves x/y/z cells that are not returned; those are not written here.)"""
    from datetime import datetime

    from ..postprocess.saving import IMG2IMG_SAMPLES, TXT2IMG_GRIDS, TXT2IMG_SAMPLES, NameFacts, SaveTarget, save_image

    samples = IMG2IMG_SAMPLES if tab == "img2img" else TXT2IMG_SAMPLES
    grids = (
        SaveTarget("outdir_img2img_grids", "outdir_grids", "grid", "grid_save_to_dirs")
        if tab == "img2img"
        else TXT2IMG_GRIDS
    )
    now = datetime.now()
    for out in output.images:
        if not options.get("grid_save" if out.grid else "samples_save", True):
            continue
        facts = NameFacts(out.seed, out.prompt, out.image.width, out.image.height, now)
        save_image(
            out.image, grids if out.grid else samples, facts, out.infotext if out.embed else None, options, data_dir
        )


def script_infos(runtime: Any) -> list[dict[str, Any]]:
    """/sdapi/v1/script-info: every catalog script per tab (txt2img's first, as A1111 lists
    them) with its arguments; scripts without a spec here (extensions) list no arguments."""
    from ..script_catalog import SCRIPTS, TABS

    entries = []
    for tab in TABS:
        ctx = script_context(runtime, tab, runtime.options.snapshot(), ())
        for script in SCRIPTS:
            if tab in script.tabs:
                entries.append({
                    "name": script.name,
                    "is_alwayson": not script.selectable,
                    "is_img2img": tab == "img2img",
                    "args": [spec.api_item() for spec in arg_specs(script.name, ctx)],
                })
    return entries


def arg_specs(name: str, ctx: ScriptContext) -> list[Any]:
    from . import prompts_from_file, sd_upscale, xyz_plot

    modules = {m.TITLE: m for m in (prompts_from_file, sd_upscale, xyz_plot)}
    module = modules.get(name)
    return [] if module is None else module.arg_specs(ctx)

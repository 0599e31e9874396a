"""A request that names a built-in script: plan it off the event loop, queue it as ONE work
item, save and answer.

The whole script is one entry of the scheduler's queue (one slot against the queue-depth
limit, one /progress job whose job_count is the script's total batch count), so a 25-cell
x/y/z plot cannot be overtaken half-way by other requests, just as A1111 holds its queue lock
for the whole script. Planning, the engine worker and the response shape are the scripts'
own (webui_api.builtin_scripts.runner).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..builtin_scripts.base import ScriptContext, ScriptOutput, ScriptRun
from ..builtin_scripts.runner import (
    EngineWorker,
    plan_script,
    save_outputs,
    script_context,
    script_response,
    script_weights,
)
from ..jobs import GenerationJob
from ..progress import CancelToken
from ..runtime import Runtime
from ..scheduler import ProgressSpec, WorkItem
from ..serving.context import RequestContext
from ..serving.script_budget import ScriptBudget
from ..styles import PromptStyle
from ..weights.runtime import check_fetchable, prefetch


async def run_script(
    request: Any,
    tab: str,
    options: Mapping[str, Any],
    styles: Sequence[PromptStyle],
    runtime: Runtime,
    disconnected: Callable[[], Awaitable[bool]] | None = None,
    guarded: bool = True,
    context: RequestContext | None = None,
) -> dict[str, Any]:
    """The txt2img / img2img response of a request that names a built-in script. A script
    run is served like a direct job: every planned job passes the request guards and the
    prompt filter (ScriptContext.check_job), it queues at the caller's priority, its wait and
    run times reach the metrics, and it is counted and audited (never cached: scripts draw
    random seeds per line/cell)."""
    context = context or RequestContext()
    ctx = guarded_context(runtime, tab, request.script_name, options, styles, context)
    planned = await asyncio.to_thread(plan_script, request, ctx)
    await prefetch(runtime.weights, script_weights(request, ctx, runtime.settings, planned))
    first = planned.first_job  # steps x images of the first job per /progress unit: cells may differ (an estimate)
    steps = first.sampling.steps * first.batch_size * planned.job_count
    item = runtime.serving.timed(script_item(runtime, tab, planned), tab, steps, context)
    output = await runtime.scheduler.run(item, priority=context.priority, guarded=guarded, disconnected=disconnected)
    job_options = planned.first_job.options
    if request.save_images:
        await asyncio.to_thread(save_outputs, output, tab, job_options, runtime.settings.data_dir)
    response = await asyncio.to_thread(script_response, request, tab, output, job_options)
    return await runtime.serving.finish(tab, request, response, context, cacheable=False)


def guarded_context(runtime: Runtime, tab: str, script_name: str, options: Mapping[str, Any],
                    styles: Sequence[PromptStyle], context: RequestContext) -> ScriptContext:
    """The planning context whose check_job applies the server's guards and the caller's
    content policy to every job the script plans, and whose budget counts the whole run
    against --max-script-images / --max-script-work (a fresh budget per request), so a run
    over either is refused while it is planned, before anything is queued."""
    budget = ScriptBudget(runtime.serving.limits.script_limits, f"script '{script_name}'")
    return replace(script_context(runtime, tab, options, styles), check_job=runtime.serving.job_guard(context, tab),
                   charge=budget.charge)


async def plan_checked(prepared: Any, tab: str, runtime: Runtime, context: RequestContext) -> ScriptRun:
    """Plan a script request without queueing it (async tasks are checked this way), and
    refuse it when a weights file it needs is missing and cannot be fetched."""
    ctx = guarded_context(runtime, tab, prepared.request.script_name, prepared.options, prepared.styles, context)
    planned = await asyncio.to_thread(plan_script, prepared.request, ctx)
    # weights run_script would fetch first: refused now when they cannot be fetched (--offline)
    check_fetchable(runtime.weights, script_weights(prepared.request, ctx, runtime.settings, planned))
    return planned


def script_item(runtime: Runtime, tab: str, planned: ScriptRun) -> WorkItem:
    def run(cancel: CancelToken) -> ScriptOutput:
        from ..postprocess.upscale import UpscalerCatalog

        # run_script fetched sd upscale's upscaler before queueing; fetching here too is the
        # safety net (the file vanished meanwhile), on the worker
        catalog = UpscalerCatalog.from_settings(runtime.settings, models=runtime.postprocess_models,
                                                options=planned.first_job.options, fetch=runtime.weights.ensure)
        worker = EngineWorker(runtime.engine, runtime.progress, cancel, planned.job_count, catalog,
                              restorer_lookup(runtime))
        return planned.execute(worker)

    first = planned.first_job
    spec = ProgressSpec(f"scripts_{tab}", planned.job_count, first.job_timestamp, first.preview_every_n_steps)
    return WorkItem(run=run, label=f"{tab} script", progress=spec)


def restorer_lookup(runtime: Runtime) -> Callable[[GenerationJob], Any]:
    """A script's jobs (prompts-from-file lines, x/y/z cells) may each ask for restore_faces;
    the restorer is resolved per job, as for a plain request."""
    from ..postprocess.face_restore.restorers import job_restorer

    def restorer_for(job: GenerationJob) -> Any:
        return job_restorer(runtime.settings, runtime.postprocess_models, job.options) if job.restore_faces else None

    return restorer_for

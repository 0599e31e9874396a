"""txt2img and img2img from request to response: the one path every caller takes.

The synchronous routes, async tasks, the ControlNet endpoint and anything else that
generates call `run_txt2img` / `run_img2img`. Steps: prepare (styles, infotext, guards,
options), a named script's fan-out, the result cache, one work item queued at the caller's
priority, saving, the response, and the serving hooks' finish (cache store, audit, timings).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import NotFound
from ..job_builder import build_img2img, build_txt2img
from ..runtime import Runtime
from ..schemas.generation import Img2ImgRequest, Txt2ImgRequest
from ..serving.context import RequestContext
from ..serving.hooks import job_steps
from ..weights.runtime import job_weights, prefetch
from .outputs import build_response, img2img_echo, save_outputs
from .prepare import PreparedRequest, prepare
from .work import face_restorer, first_pass_sink, img2img_item, txt2img_item

Disconnected = Callable[[], Awaitable[bool]]


async def run_txt2img(
    request: Txt2ImgRequest,
    runtime: Runtime,
    disconnected: Disconnected | None = None,
    guarded: bool = True,
    context: RequestContext | None = None,
) -> dict[str, Any]:
    """The txt2img answer. Async tasks pass `guarded=False` and no `disconnected`: they are
    already persisted and admitted, so neither the queue-depth limit, the queue timeout nor a
    closed connection may drop them. `context` carries the caller's priority and collects the
    cache outcome and timings."""
    context = context or RequestContext()
    prepared = prepare(request, runtime, context)
    request = prepared.request
    if request.script_name:
        return await _run_script(prepared, "txt2img", runtime, disconnected, guarded, context)
    if (cached := await runtime.serving.lookup("txt2img", request, prepared.options, context)) is not None:
        return cached
    job = build_txt2img(request, prepared.options, styles=list(prepared.styles))
    await prefetch(runtime.weights, job_weights(runtime.settings, job))  # built-in upscaler / face weights, first use
    save = bool(request.save_images)
    restorer = face_restorer(runtime, job, save)
    first_pass = first_pass_sink(job, save)
    item = runtime.serving.timed(txt2img_item(runtime, job, restorer, first_pass), "txt2img", job_steps(job), context)
    result = await runtime.scheduler.run(item, context.priority, guarded=guarded, disconnected=disconnected)
    grid = await asyncio.to_thread(save_outputs, runtime, job, result, request, restorer, first_pass) if save else None
    response = await asyncio.to_thread(build_response, request, job, result, grid)
    return await runtime.serving.finish("txt2img", request, response, context, cacheable=not result.interrupted)


async def run_img2img(
    request: Img2ImgRequest,
    runtime: Runtime,
    disconnected: Disconnected | None = None,
    guarded: bool = True,
    context: RequestContext | None = None,
) -> dict[str, Any]:
    """The img2img answer, with the same queue guards, cache and priority as txt2img."""
    if request.init_images is None:
        raise NotFound("Init image not found")
    context = context or RequestContext()
    prepared = prepare(request, runtime, context)
    request = prepared.request
    if request.script_name:
        return await _run_script(prepared, "img2img", runtime, disconnected, guarded, context)
    if (cached := await runtime.serving.lookup("img2img", request, prepared.options, context)) is not None:
        return cached
    job = await asyncio.to_thread(build_img2img, request, prepared.options, None, list(prepared.styles))
    await prefetch(runtime.weights, job_weights(runtime.settings, job))
    save = bool(request.save_images)
    restorer = face_restorer(runtime, job, save)
    item = runtime.serving.timed(img2img_item(runtime, job, restorer), "img2img", job_steps(job), context)
    result = await runtime.scheduler.run(item, context.priority, guarded=guarded, disconnected=disconnected)
    grid = await asyncio.to_thread(save_outputs, runtime, job, result, request, restorer) if save else None
    response = await asyncio.to_thread(build_response, img2img_echo(request), job, result, grid)
    return await runtime.serving.finish("img2img", request, response, context, cacheable=not result.interrupted)


async def _run_script(
    prepared: PreparedRequest, tab: str, runtime: Runtime, disconnected: Disconnected | None, guarded: bool,
    context: RequestContext,
) -> dict[str, Any]:
    """script_name set: the built-in script runs instead (one queue slot for all its jobs)."""
    from .scripts import run_script

    return await run_script(prepared.request, tab, prepared.options, prepared.styles, runtime, disconnected,
                            guarded, context)


async def check_before_queueing(tab: str, request: Any, runtime: Runtime, context: RequestContext) -> None:
    """Everything run_txt2img / run_img2img refuse before they queue, without queueing: async
    tasks call this before they are stored, so a task is accepted exactly when the same body
    would be accepted synchronously (guards, content policy, infotext and styles, options,
    output format, samplers, scripts and their planned jobs, images, face restoration)."""
    if tab == "img2img" and request.init_images is None:
        raise NotFound("Init image not found")
    prepared = prepare(request, runtime, context)
    if prepared.request.script_name:
        from .scripts import plan_checked

        await plan_checked(prepared, tab, runtime, context)
        return
    build = build_img2img if tab == "img2img" else build_txt2img
    job = await asyncio.to_thread(build, prepared.request, prepared.options, None, list(prepared.styles))
    needed = job_weights(runtime.settings, job)  # unknown upscaler / face model names are refused here
    if not needed.required:  # weights still to fetch are fetched when the task runs, as the sync route would
        face_restorer(runtime, job)

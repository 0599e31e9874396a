"""txt2img and img2img from request to response: the one path every caller takes.

The synchronous routes, async tasks, the ControlNet endpoint and anything else that
generates call `run_txt2img` / `run_img2img`, one flow (`run_generation`) parameterised by the
tab (`TabFlow`: job builder, work item, echoed parameters). Steps: prepare (styles, infotext, guards,
options), a named script's fan-out, the result cache, one work item queued at the caller's
priority, saving, the response, and the serving hooks' finish (cache store, audit, timings).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import NotFound
from ..job_builder import build_img2img, build_txt2img
from ..jobs import GenerationJob
from ..runtime import Runtime
from ..scheduler import WorkItem
from ..schemas.generation import Img2ImgRequest, Txt2ImgRequest
from ..serving.context import RequestContext
from ..serving.hooks import job_steps
from ..weights.runtime import check_fetchable, job_weights, prefetch
from .outputs import build_response, img2img_echo, save_outputs
from .prepare import PreparedRequest, prepare
from .work import face_restorer, first_pass_sink, img2img_item, txt2img_item

Disconnected = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class TabFlow:
    """What differs between the txt2img and img2img flows: the job builder, the work item
    and the request the response echoes as `parameters`."""

    name: str
    build: Callable[..., GenerationJob]  # (request, options, rng, styles) -> job
    work_item: Callable[[Runtime, GenerationJob, Any, list[Any] | None], WorkItem]
    echo: Callable[[Any], Any]


def _img2img_item(runtime: Runtime, job: GenerationJob, restorer: Any, first_pass: list[Any] | None) -> WorkItem:
    """img2img has no hires pass, so no first-pass sink."""
    return img2img_item(runtime, job, restorer)


def tab_flow(tab: str) -> TabFlow:
    """The flow of "txt2img" or "img2img"."""
    if tab == "txt2img":
        return TabFlow("txt2img", build_txt2img, txt2img_item, lambda request: request)
    if tab == "img2img":
        return TabFlow("img2img", build_img2img, _img2img_item, img2img_echo)
    raise ValueError(f"unknown generation tab {tab!r}")


async def run_txt2img(
    request: Txt2ImgRequest,
    runtime: Runtime,
    disconnected: Disconnected | None = None,
    guarded: bool = True,
    context: RequestContext | None = None,
) -> dict[str, Any]:
    """The txt2img answer (see run_generation)."""
    return await run_generation(tab_flow("txt2img"), request, runtime, disconnected, guarded, context)


async def run_img2img(
    request: Img2ImgRequest,
    runtime: Runtime,
    disconnected: Disconnected | None = None,
    guarded: bool = True,
    context: RequestContext | None = None,
) -> dict[str, Any]:
    """The img2img answer, with the same queue guards, cache and priority as txt2img."""
    return await run_generation(tab_flow("img2img"), request, runtime, disconnected, guarded, context)


async def run_generation(
    flow: TabFlow,
    request: Txt2ImgRequest | Img2ImgRequest,
    runtime: Runtime,
    disconnected: Disconnected | None = None,
    guarded: bool = True,
    context: RequestContext | None = None,
) -> dict[str, Any]:
    """One tab's answer. Async tasks pass `guarded=False` and no `disconnected`: they are
    already persisted and admitted, so neither the queue-depth limit, the queue timeout nor a
    closed connection may drop them. `context` carries the caller's priority and collects the
    cache outcome and timings."""
    check_init_images(flow.name, request)
    context = context or RequestContext()
    prepared = prepare(request, runtime, context)
    request = prepared.request
    if request.script_name:
        return await _run_script(prepared, flow.name, runtime, disconnected, guarded, context)
    if (cached := await runtime.serving.lookup(flow.name, request, prepared.options, context)) is not None:
        return cached
    job = await build_job(flow, prepared)
    await prefetch(runtime.weights, job_weights(runtime.settings, job))  # built-in upscaler / face weights, first use
    save = bool(request.save_images)
    restorer = face_restorer(runtime, job, save)
    first_pass = first_pass_sink(job, save)  # None without a hires pass
    item = flow.work_item(runtime, job, restorer, first_pass)
    timed = runtime.serving.timed(item, flow.name, job_steps(job), context)
    result = await runtime.scheduler.run(timed, context.priority, guarded=guarded, disconnected=disconnected)
    grid = await asyncio.to_thread(save_outputs, runtime, job, result, request, restorer, first_pass) if save else None
    response = await asyncio.to_thread(build_response, flow.echo(request), job, result, grid)
    return await runtime.serving.finish(flow.name, request, response, context, cacheable=not result.interrupted)


def check_init_images(tab: str, request: Any) -> None:
    """img2img without init images is A1111's 404 "Init image not found"."""
    if tab == "img2img" and request.init_images is None:
        raise NotFound("Init image not found")


async def build_job(flow: TabFlow, prepared: PreparedRequest) -> GenerationJob:
    """The job, built off the event loop (img2img decodes and resizes its images)."""
    return await asyncio.to_thread(flow.build, prepared.request, prepared.options, None, list(prepared.styles))


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
    check_init_images(tab, request)
    prepared = prepare(request, runtime, context)
    if prepared.request.script_name:
        from .scripts import plan_checked

        await plan_checked(prepared, tab, runtime, context)
        return
    job = await build_job(tab_flow(tab), prepared)
    needed = job_weights(runtime.settings, job)  # unknown upscaler / face model names are refused here
    check_fetchable(runtime.weights, needed)  # missing while --offline: the sync route's 400, before storing
    if not needed.required:  # weights still to fetch are fetched when the task runs, as the sync route would
        face_restorer(runtime, job)

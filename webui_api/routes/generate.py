"""POST /sdapi/v1/txt2img, /img2img and /png-info."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional, Sequence

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..batching import batch_key
from ..errors import InvalidImageFormat, NotFound
from ..job_builder import apply_infotext, build_img2img, build_txt2img, request_styles
from ..jobs import GenerationJob, JobResult
from ..output_urls import wants_urls
from ..results import build_infotexts, build_info, encode_images
from ..scheduler import BatchSlot, ProgressSpec, WorkItem
from ..schemas.generation import GenerationResponse, Img2ImgRequest, Txt2ImgRequest
from ..auth import request_context
from ..services import Services
from ..serving.context import RequestContext
from ..serving.hooks import job_steps
from ..styles import style_files
from ..task_progress import create_task_id, run_tracked
from ..weights.runtime import job_weights, prefetch
from . import api_router, get_services
from .disconnect import watch_disconnect

router = api_router()


@router.post("/sdapi/v1/txt2img", response_model=GenerationResponse)
async def txt2img(
    request: Txt2ImgRequest, http: Request, response: Response, services: Services = Depends(get_services),
) -> dict[str, Any]:
    return await _answer(http, response, services, request, "txt2img",
                         lambda gone, context: run_txt2img(request, services, gone, context=context))


async def _answer(
    http: Request, response: Response, services: Services, request: Any, kind: str,
    work: Callable[..., Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """What both synchronous generation routes do around their work: the caller's context
    (key, priority), a watch for a client that hangs up, the job's task id (force_task_id or
    A1111's generated one) for per-job progress, URL outputs when asked, and the X-Cache header."""
    context = request_context(http)
    task_id = request.force_task_id or create_task_id(kind)
    finish = url_outputs(http, services) if wants_urls(request.output_urls, services.settings.output_urls) else None
    async with watch_disconnect(http) as disconnected:
        body = await run_tracked(services.progress, task_id, lambda: work(disconnected, context), finish,
                                 owner=context.caller)
    response.headers["X-Cache"] = context.cache
    return body


def url_outputs(http: Request, services: Services) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """Store a response's images and answer their URLs (off the event loop: it writes files)."""
    store = http.app.state.output_store
    base_url = str(http.base_url)

    async def finish(body: dict[str, Any]) -> dict[str, Any]:
        return await run_in_threadpool(store.images_to_urls, body, base_url)

    return finish


async def run_txt2img(
    request: Txt2ImgRequest,
    services: Services,
    disconnected: Optional[Callable[[], Awaitable[bool]]] = None,
    guarded: bool = True,
    context: Optional[RequestContext] = None,
) -> dict[str, Any]:
    """The txt2img work, shared by the synchronous route and async tasks. Tasks pass
    `guarded=False` and no `disconnected`: they are already persisted and admitted, so neither
    the queue-depth limit, the queue timeout nor a closed connection may drop them.
    `context` carries the caller's priority and collects the cache outcome and timings."""
    context = context or RequestContext()
    request, options, styles = _prepare(request, services)
    if request.script_name:
        return await _run_script(request, "txt2img", options, styles, services, disconnected, guarded)
    if (cached := await services.serving.lookup("txt2img", request, options, context)) is not None:
        return cached
    job = build_txt2img(request, options, styles=styles)
    await prefetch(services.weights, job_weights(services.settings, job))  # built-in upscaler / face weights, first use
    restorer = _face_restorer(services, job, bool(request.save_images))
    first_pass = _first_pass_sink(job, bool(request.save_images))
    item = services.serving.timed(_txt2img_item(services, job, restorer, first_pass), "txt2img", job_steps(job), context)
    result, model_info = await services.scheduler.run(item, context.priority, guarded=guarded, disconnected=disconnected)
    grid = None
    if request.save_images:
        grid = await run_in_threadpool(_save_outputs, services, job, result, model_info, request, restorer, first_pass)
    response = await run_in_threadpool(_response, request, job, result, model_info, grid)
    return await services.serving.finish("txt2img", request, response, context, cacheable=not result.interrupted)


async def _run_script(request: Any, tab: str, options: Any, styles: Any, services: Services, disconnected: Any, guarded: bool) -> dict[str, Any]:
    """script_name set: the built-in script runs instead (one queue slot for all its jobs)."""
    from ..builtin_scripts.runner import run_script

    return await run_script(request, tab, options, styles, services, disconnected, guarded)


def _face_restorer(services: Services, job: GenerationJob, save_images: bool = False) -> Any:
    """The face restorer of a restore_faces job (a missing model is a 400 now, before the
    queue), None otherwise. It keeps the unrestored images when they are to be saved too."""
    if not job.restore_faces:
        return None
    from ..postprocess.face_restore.restorers import job_restorer, keeps_originals

    keep = keeps_originals(job.options, save_images)
    return job_restorer(services.settings, services.postprocess_models, job.options, keep_originals=keep)


def _first_pass_sink(job: GenerationJob, save_images: bool) -> list[Any] | None:
    """A list the engine fills with hires fix's first-pass pictures when they are to be saved
    (save_images_before_highres_fix), else None."""
    from ..postprocess.saving import keeps_before_hires

    return [] if keeps_before_hires(job, job.options, save_images) else None


def _prepare(request: Any, services: Services) -> tuple[Any, dict[str, Any], Any]:
    """What both generation routes do first: read the styles, paste a sent infotext into the
    fields the client left out, take the per-job options, refuse an unusable output format."""
    styles = request_styles(request, style_files(services.settings))
    request = apply_infotext(request, services.options.snapshot(), styles)
    services.serving.check(request)  # size/batch/steps/prompt/input-image guards; 503 while shutting down
    options = services.options.with_overrides(request.override_settings or {})
    check_output_format(options)
    return request, options, styles


def _save_outputs(
    services: Services, job: GenerationJob, result: JobResult, model_info: Any, request: Any = None, restorer: Any = None,
    first_pass: list[Any] | None = None,
) -> Any:
    """save_images: true writes samples (and the grid) under the data dir as A1111 does, in the
    txt2img or img2img folders; returns the grid when A1111 would return it first
    (return_grid), else None."""
    from ..postprocess import saving
    from ..postprocess.grid import grid_shape, image_grid, wants_grid

    infotexts = build_infotexts(job, result, model_info)
    options, data_dir = job.options, services.settings.data_dir
    img2img = job.kind == "img2img"
    facts = saving.job_name_facts(job, model_info, result, tuple(getattr(request, "styles", None) or ()))
    samples, grids = (saving.IMG2IMG_SAMPLES, saving.IMG2IMG_GRIDS) if img2img else (saving.TXT2IMG_SAMPLES, saving.TXT2IMG_GRIDS)
    before = tuple(getattr(restorer, "originals", ()))  # save_images_before_face_restoration
    saving.save_samples(result, infotexts, options, data_dir, samples, job=facts, before_restoration=before,
                        before_hires=tuple(first_pass or ()))
    if not result.images or not wants_grid(len(result.images), options):
        return None
    grid = image_grid([g.image for g in result.images], grid_shape(len(result.images), job.batch_size, options))
    if options.get("grid_save", True):
        saving.save_grid(grid, result, infotexts[0], options, data_dir, grids, job=facts)
    return grid if options.get("return_grid", True) else None


def check_output_format(options: dict[str, Any]) -> None:
    """An unusable samples_format is refused before any work, not after the images exist."""
    from ..postprocess.encode import SUPPORTED_FORMATS

    fmt = str(options.get("samples_format", "png")).lower()
    if fmt not in SUPPORTED_FORMATS:
        raise InvalidImageFormat(fmt)


def _txt2img_item(services: Services, job: GenerationJob, restorer: Any = None, first_pass: list[Any] | None = None) -> WorkItem:
    """A batchable job on a batching server runs through the batched path even alone, so its
    images do not depend on whether partners showed up (webui_api.engine.batched)."""
    slot = _batch_slot(services, job)

    def run(cancel) -> tuple[JobResult, Any]:
        model = services.engine.load(job.model_title)
        extra: dict[str, Any] = {} if first_pass is None else {"before_hires": first_pass.extend}
        if restorer is not None:
            extra["restore_faces"] = restorer
        if slot is not None:
            extra["unet_rows"] = services.settings.unet_rows
        return services.engine.txt2img(job, services.progress, cancel, **extra), model.info

    job_count = job.n_iter * 2 if job.hires is not None else job.n_iter  # A1111 doubles it for hires fix
    spec = ProgressSpec("scripts_txt2img", job_count, job.job_timestamp, job.preview_every_n_steps)
    return WorkItem(run=run, label="txt2img", progress=spec, batch=slot)


def _batch_slot(services: Services, job: GenerationJob) -> BatchSlot | None:
    """How the job may join a cross-request batch; None when batching is off or it must run alone."""
    key = batch_key(job) if services.scheduler.batching.enabled else None
    if key is None:
        return None

    def run_group(items: Sequence[WorkItem]) -> list[tuple[JobResult, Any]]:
        return _run_batched(services, [item.batch.payload for item in items], [item.cancel for item in items])

    return BatchSlot(key=key, size=job.batch_size, run_group=run_group, payload=job)


def _run_batched(services: Services, jobs: list[GenerationJob], cancels: list[Any]) -> list[tuple[JobResult, Any]]:
    model = services.engine.load(jobs[0].model_title)
    results = services.engine.txt2img_batch(jobs, services.progress, cancels, unet_rows=services.settings.unet_rows)
    return [(result, model.info) for result in results]


def _response(
    request: Txt2ImgRequest | Img2ImgRequest, job: GenerationJob, result: JobResult, model_info: Any, grid: Any = None,
) -> dict[str, Any]:
    """Encode off the event loop and off the worker: the device moves on to the next job
    while this one's PNGs are written, and /progress polls stay instant. A grid goes first,
    with the first image's infotext, as A1111's index_of_first_image = 1 says."""
    infotexts = build_infotexts(job, result, model_info)
    images = encode_images(result, infotexts, job.options) if request.send_images else []
    if grid is not None:
        infotexts = [infotexts[0], *infotexts]
        images = [_encode_grid(grid, job.options), *images] if request.send_images else images
    return {
        "images": images,
        "parameters": request.model_dump(),
        "info": build_info(job, result, model_info, infotexts, request, index_of_first_image=1 if grid is not None else 0),
    }


def _encode_grid(grid: Any, options: dict[str, Any]) -> str:
    """A1111 returns the grid without text chunks (its PIL info is empty), in samples_format."""
    from ..postprocess.encode import encode_image_base64, encoding_options

    return encode_image_base64(grid, str(options.get("samples_format", "png")).lower(), **encoding_options(options))


@router.post("/sdapi/v1/img2img", response_model=GenerationResponse)
async def img2img(
    request: Img2ImgRequest, http: Request, response: Response, services: Services = Depends(get_services),
) -> dict[str, Any]:
    return await _answer(http, response, services, request, "img2img",
                         lambda gone, context: run_img2img(request, services, gone, context=context))


async def run_img2img(
    request: Img2ImgRequest,
    services: Services,
    disconnected: Optional[Callable[[], Awaitable[bool]]] = None,
    guarded: bool = True,
    context: Optional[RequestContext] = None,
) -> dict[str, Any]:
    """The img2img work, with the same queue guards, cache and priority as txt2img."""
    if request.init_images is None:
        raise NotFound("Init image not found")
    context = context or RequestContext()
    request, options, styles = _prepare(request, services)
    if request.script_name:
        return await _run_script(request, "img2img", options, styles, services, disconnected, guarded)
    if (cached := await services.serving.lookup("img2img", request, options, context)) is not None:
        return cached
    job = await run_in_threadpool(build_img2img, request, options, None, styles)
    await prefetch(services.weights, job_weights(services.settings, job))
    restorer = _face_restorer(services, job, bool(request.save_images))
    item = services.serving.timed(_img2img_item(services, job, restorer), "img2img", job_steps(job), context)
    result, model_info = await services.scheduler.run(item, context.priority, guarded=guarded, disconnected=disconnected)
    grid = await run_in_threadpool(_save_outputs, services, job, result, model_info, request, restorer) if request.save_images else None
    echoed = request if request.include_init_images else request.model_copy(update={"init_images": None, "mask": None})
    response = await run_in_threadpool(_response, echoed, job, result, model_info, grid)
    return await services.serving.finish("img2img", request, response, context, cacheable=not result.interrupted)


def _img2img_item(services: Services, job: GenerationJob, restorer: Any = None) -> WorkItem:
    def run(cancel) -> tuple[JobResult, Any]:
        model = services.engine.load(job.model_title)
        if restorer is None:
            return services.engine.img2img(job, services.progress, cancel), model.info
        return services.engine.img2img(job, services.progress, cancel, restore_faces=restorer), model.info

    spec = ProgressSpec("scripts_img2img", job.n_iter, job.job_timestamp, job.preview_every_n_steps)
    return WorkItem(run=run, label="img2img", progress=spec)


@router.post("/sdapi/v1/png-info")
async def png_info(body: dict[str, Any]) -> dict[str, Any]:
    from ..postprocess.encode import png_info_response

    image = body.get("image")
    if not image:
        raise NotFound("Image not found")
    return png_info_response(str(image))

"""POST /sdapi/v1/txt2img, /img2img and /png-info: parse, call the generation layer, shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..auth import request_context
from ..errors import NotFound
from ..generation.runs import run_img2img, run_txt2img
from ..output_urls import wants_urls
from ..runtime import Runtime
from ..schemas.generation import GenerationResponse, Img2ImgRequest, Txt2ImgRequest
from ..serving.context import RequestContext
from ..task_progress import create_task_id, run_tracked
from . import api_router, get_runtime, watch_disconnect

router = api_router()

Work = Callable[[Callable[[], Awaitable[bool]], RequestContext], Awaitable[dict[str, Any]]]


@router.post("/sdapi/v1/txt2img", response_model=GenerationResponse)
async def txt2img(
    request: Txt2ImgRequest, http: Request, response: Response, runtime: Runtime = Depends(get_runtime),
) -> dict[str, Any]:
    return await _answer(http, response, runtime, request, "txt2img",
                         lambda gone, context: run_txt2img(request, runtime, gone, context=context))


@router.post("/sdapi/v1/img2img", response_model=GenerationResponse)
async def img2img(
    request: Img2ImgRequest, http: Request, response: Response, runtime: Runtime = Depends(get_runtime),
) -> dict[str, Any]:
    return await _answer(http, response, runtime, request, "img2img",
                         lambda gone, context: run_img2img(request, runtime, gone, context=context))


async def _answer(
    http: Request, response: Response, runtime: Runtime, request: Txt2ImgRequest | Img2ImgRequest, kind: str,
    work: Work,
) -> dict[str, Any]:
    """What both synchronous generation routes do around their work: the caller's context
    (key, priority), a watch for a client that hangs up, the job's task id (force_task_id or
    A1111's generated one) for per-job progress, URL outputs when asked, and the X-Cache header."""
    context = request_context(http)
    task_id = request.force_task_id or create_task_id(kind)
    finish = url_outputs(http) if wants_urls(request.output_urls, runtime.settings.output_urls) else None
    async with watch_disconnect(http) as disconnected:
        body = await run_tracked(runtime.progress, task_id, lambda: work(disconnected, context), finish,
                                 owner=context.owner)
    response.headers["X-Cache"] = context.cache
    return body


def url_outputs(http: Request) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """Store a response's images and answer their URLs (off the event loop: it writes files)."""
    store = http.app.state.output_store
    base_url = str(http.base_url)

    async def finish(body: dict[str, Any]) -> dict[str, Any]:
        return await run_in_threadpool(store.images_to_urls, body, base_url)

    return finish


@router.post("/sdapi/v1/png-info")
async def png_info(body: dict[str, Any]) -> dict[str, Any]:
    from ..postprocess.encode import png_info_response

    image = body.get("image")
    if not image:
        raise NotFound("Image not found")
    return png_info_response(str(image))

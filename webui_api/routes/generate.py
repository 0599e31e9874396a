"""POST /sdapi/v1/txt2img, /img2img and /png-info: parse, call the generation layer, shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, Request, Response

from ..auth import request_context
from ..errors import NotFound
from ..generation.runs import run_img2img, run_txt2img
from ..runtime import Runtime
from ..schemas.generation import GenerationResponse, Img2ImgRequest, Txt2ImgRequest
from ..serving.context import RequestContext
from . import api_router, get_runtime, watch_disconnect

router = api_router()

Work = Callable[[Callable[[], Awaitable[bool]], RequestContext], Awaitable[dict[str, Any]]]


@router.post("/sdapi/v1/txt2img", response_model=GenerationResponse)
async def txt2img(
    request: Txt2ImgRequest, http: Request, response: Response, runtime: Runtime = Depends(get_runtime),
) -> dict[str, Any]:
    return await _answer(http, response, lambda gone, context: run_txt2img(request, runtime, gone, context=context))


@router.post("/sdapi/v1/img2img", response_model=GenerationResponse)
async def img2img(
    request: Img2ImgRequest, http: Request, response: Response, runtime: Runtime = Depends(get_runtime),
) -> dict[str, Any]:
    return await _answer(http, response, lambda gone, context: run_img2img(request, runtime, gone, context=context))


async def _answer(http: Request, response: Response, work: Work) -> dict[str, Any]:
    """What both synchronous generation routes do around their work: the caller's context
    (key, priority), a watch for a client that hangs up, and the X-Cache header."""
    context = request_context(http)
    async with watch_disconnect(http) as disconnected:
        body = await work(disconnected, context)
    response.headers["X-Cache"] = context.cache
    return body


@router.post("/sdapi/v1/png-info")
async def png_info(body: dict[str, Any]) -> dict[str, Any]:
    from ..postprocess.encode import png_info_response

    image = body.get("image")
    if not image:
        raise NotFound("Image not found")
    return png_info_response(str(image))

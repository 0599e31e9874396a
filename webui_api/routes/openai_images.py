"""OpenAI-compatible images API: POST /v1/images/generations, /edits, /variations and
GET /v1/models, for apps that speak OpenAI's API (Open WebUI, LibreChat, the `openai` package).

Each request becomes an ordinary txt2img or img2img request and runs through the same work
as /sdapi/v1/txt2img and /img2img (queue, guards, cache, metrics, audit). Keys are the API
keys file's (`Authorization: Bearer <key>`), route group `generate` (`catalog` for /v1/models).
Every error, from the auth check to the engine, answers in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`: the route class below converts them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError, StarletteHTTPException
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from ..auth import request_context, require_api_auth
from ..errors import ApiError
from ..generation.runs import run_img2img, run_txt2img
from ..openai_images.errors import (
    OpenAIParamError,
    api_error_body,
    error_body,
    openai_status,
    validation_error_body,
)
from ..openai_images.params import (
    EditForm,
    GenerationBody,
    ImageOptions,
    ImagesResponse,
    ModelList,
    OpenAIError,
    VariationForm,
    check_supported,
    images_response,
    img2img_fields,
    is_openai_model_name,
    native_size,
    parse_size,
    snap_to_multiple_of_8,
    txt2img_fields,
)
from ..output_urls import wants_urls
from ..runtime import Runtime
from ..schemas.errors import OWN_ERROR_SHAPE
from ..schemas.generation import Img2ImgRequest, Txt2ImgRequest
from . import get_runtime, watch_disconnect

A1111Request = TypeVar("A1111Request", Txt2ImgRequest, Img2ImgRequest)


class OpenAIErrorRoute(APIRoute):
    """An APIRoute whose errors (auth, validation, guards, engine) answer in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                headers = dict(getattr(exc, "headers", None) or {})  # Retry-After of 429/503
                status = openai_status(exc.status_code)
                body = api_error_body(exc, status)
                return JSONResponse(body, status_code=status, headers=headers)
            except RequestValidationError as exc:
                return JSONResponse(validation_error_body(list(exc.errors())), status_code=400)
            except StarletteHTTPException as exc:
                return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

        return openai_errors


# Their refusals as /openapi.json documents them: OpenAI's body (not A1111's), no 422 (bad input is a 400).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIError, "description": description} for status, description in (
        (400, "A parameter OpenAI's API (or the server's schema) refuses; `param` names it"),
        (401, "Missing or wrong API key (code invalid_api_key)"),
        (403, "The API key's route groups do not include this route"),
        (404, "Unknown model (code model_not_found)"),
        (413, "The body or an uploaded image is over a configured limit"),
        (429, "Rate limit of the caller's key exceeded (Retry-After says when to come back)"),
        (503, "The queue is full (Retry-After) or the server is shutting down"),
    )
}
OWN_ERRORS = {OWN_ERROR_SHAPE: "openai"}
router = APIRouter(dependencies=[Depends(require_api_auth)], route_class=OpenAIErrorRoute, responses=ERROR_RESPONSES)
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


# generations -----------------------------------------------------------------------------------


@router.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
             openapi_extra=OWN_ERRORS)
async def generations(body: GenerationBody, http: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Text to image: OpenAI's parameters mapped onto a txt2img request (see docs/api-compat.md)."""
    check_request(body)
    checkpoint = checkpoint_title(runtime, body.model)
    size = parse_size(body.size, default_size(runtime, checkpoint))
    request = a1111_request(Txt2ImgRequest, txt2img_fields(body, size, checkpoint))
    answer = await generate(http, lambda gone, context: run_txt2img(request, runtime, gone, context=context))
    return await openai_answer(http, runtime, body, answer, size)


# edits and variations --------------------------------------------------------------------------


@router.post("/v1/images/edits", response_model=ImagesResponse, response_model_exclude_none=True,
             openapi_extra=OWN_ERRORS)
async def edits(
    http: Request,
    runtime: RuntimeDep,
    form: Annotated[EditForm, Form()],
    image: Annotated[list[UploadFile] | None, File(description="The image to edit (PNG, JPEG or WebP)")] = None,
    image_array: Annotated[list[UploadFile] | None, File(alias="image[]", description="The same, as an array")] = None,
    mask: Annotated[UploadFile | None, File(description="Transparent where to edit (or white, without alpha)")] = None,
) -> dict[str, Any]:
    """Image + prompt (+ mask) to image: inpainting where the mask (or the image's own
    transparency) says, else img2img of the whole image."""
    check_request(form)
    upload = await single_upload([*(image or ()), *(image_array or ())])
    mask_bytes = await mask.read() if mask is not None else None
    fields, size = await run_in_threadpool(edit_fields, runtime, form, upload, mask_bytes)
    return await run_img2img_answer(http, runtime, form, fields, size)


@router.post("/v1/images/variations", response_model=ImagesResponse, response_model_exclude_none=True,
             openapi_extra=OWN_ERRORS)
async def variations(
    http: Request,
    runtime: RuntimeDep,
    form: Annotated[VariationForm, Form()],
    image: Annotated[UploadFile, File(description="The image to vary (PNG, JPEG or WebP)")],
) -> dict[str, Any]:
    """Image to similar images: img2img at denoising 0.6 with the (optional) prompt."""
    check_request(form)
    upload = await image.read()
    fields, size = await run_in_threadpool(variation_fields, runtime, form, upload)
    return await run_img2img_answer(http, runtime, form, fields, size)


async def single_upload(files: list[UploadFile]) -> bytes:
    if not files:
        raise OpenAIParamError("An image file is required", "image", "missing_required_parameter")
    if len(files) > 1:
        raise OpenAIParamError(f"Send one image, not {len(files)}: edits of several images are not supported", "image")
    return await files[0].read()


def edit_fields(
    runtime: Runtime, form: EditForm, upload: bytes, mask_upload: bytes | None,
) -> tuple[dict[str, Any], tuple[int, int]]:
    """Decode the uploads (off the event loop), derive the mask and size, build the img2img body."""
    from ..openai_images.uploads import edit_mask, image_of_upload, mask_base64

    limit = input_pixel_limit(runtime)
    init_b64, picture = image_of_upload(upload, "image", limit)
    mask_picture = image_of_upload(mask_upload, "mask", limit)[1] if mask_upload is not None else None
    repaint = edit_mask(picture, mask_picture)
    checkpoint = checkpoint_title(runtime, form.model)
    size = parse_size(form.size, snap_to_multiple_of_8(*picture.size))
    mask_b64 = mask_base64(repaint) if repaint is not None else None
    purpose = "masked" if repaint is not None else "unmasked"
    return img2img_fields(form, size, checkpoint, init_b64, mask_b64, purpose), size


def variation_fields(runtime: Runtime, form: VariationForm, upload: bytes) -> tuple[dict[str, Any], tuple[int, int]]:
    from ..openai_images.uploads import image_of_upload

    init_b64, picture = image_of_upload(upload, "image", input_pixel_limit(runtime))
    checkpoint = checkpoint_title(runtime, form.model)
    size = parse_size(form.size, snap_to_multiple_of_8(*picture.size))
    return img2img_fields(form, size, checkpoint, init_b64, None, "variation"), size


def input_pixel_limit(runtime: Runtime) -> int:
    """--max-input-pixels, the limit every decoded input image is held to."""
    return runtime.serving.limits.max_input_pixels


async def run_img2img_answer(
    http: Request, runtime: Runtime, options: ImageOptions, fields: dict[str, Any], size: tuple[int, int],
) -> dict[str, Any]:
    request = a1111_request(Img2ImgRequest, fields)
    answer = await generate(http, lambda gone, context: run_img2img(request, runtime, gone, context=context))
    return await openai_answer(http, runtime, options, answer, size)


# models ----------------------------------------------------------------------------------------


@router.get("/v1/models", response_model=ModelList, openapi_extra=OWN_ERRORS)
async def models(runtime: RuntimeDep) -> dict[str, Any]:
    """The checkpoints, by A1111 model name: any of them is a valid `model`."""
    return {"object": "list", "data": [{"id": info.model_name, "object": "model", "created": 0, "owned_by": "webui-api"}
                                       for info in runtime.engine.checkpoints()]}


# shared ----------------------------------------------------------------------------------------


def check_request(options: ImageOptions) -> None:
    """What this server refuses up front (streaming)."""
    check_supported(options)


def answer_urls(runtime: Runtime, options: ImageOptions) -> bool:
    """`response_format` decides; without one, the server's --output-urls does (as for A1111's routes)."""
    requested = None if options.response_format is None else options.response_format == "url"
    return wants_urls(requested, runtime.settings.output_urls)


async def openai_answer(
    http: Request, runtime: Runtime, options: ImageOptions, answer: dict[str, Any], size: tuple[int, int],
) -> dict[str, Any]:
    """OpenAI's ImagesResponse: base64 images, or signed expiring URLs of the stored outputs."""
    urls = None
    if answer_urls(runtime, options):
        store = http.app.state.output_store
        stored = await run_in_threadpool(store.images_to_urls, answer, str(http.base_url))
        urls = list(stored["images"])
    return images_response(answer, options, size, int(time.time()), urls=urls)


def a1111_request(model: type[A1111Request], fields: dict[str, Any]) -> A1111Request:
    """The A1111 request the mapped fields make; a value A1111's schema refuses (steps over the
    maximum, ...) is a 400 naming the field, as OpenAI answers a bad parameter."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise OpenAIParamError(f"{param}: {first['msg']}", param) from exc


def checkpoint_title(runtime: Runtime, model: str | None) -> str | None:
    """The checkpoint `model` names (404 model_not_found when none); None for the current one."""
    if is_openai_model_name(model):
        return None
    assert model is not None
    return runtime.engine.find_checkpoint(model).title


def default_size(runtime: Runtime, checkpoint: str | None) -> tuple[int, int]:
    """The native size of the checkpoint in use when it is the loaded one; 512x512 otherwise."""
    loaded = runtime.engine.loaded
    if loaded is not None and checkpoint in (None, loaded.info.title):
        return native_size(loaded.family, loaded.architecture)
    return native_size(None)


async def generate(http: Request, work: Callable[..., Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run the work with the caller's priority, dropping it when the client hangs up."""
    context = request_context(http)
    async with watch_disconnect(http) as disconnected:
        return await work(disconnected, context)

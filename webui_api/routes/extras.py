"""POST /sdapi/v1/extra-single-image and /extra-batch-images (A1111's extras tab over HTTP).

Decoding and encoding happen off the worker; the upscaling itself runs on the scheduler's
worker (job "extras" in /progress) so it never competes with a generation for the device.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ConfigDict, Field

from ..auth import request_context
from ..errors import InvalidImageFormat
from ..job_builder import job_timestamp
from ..postprocess.encode import SUPPORTED_FORMATS, decode_image_base64, encode_image_base64, encoding_options
from ..postprocess.extras import ExtrasParams, ExtrasResult, ProcessedImage, check_output_size, check_params, run_extras
from ..postprocess.face_restore.restorers import FaceRestorers
from ..postprocess.upscale import TileSpec, UpscalerCatalog
from ..runtime import Runtime
from ..scheduler import PRIORITY_NORMAL, ProgressSpec, WorkItem
from ..schemas.edge import EdgeModel
from ..weights.runtime import extras_weights, prefetch
from ..workers import RemoteExtras
from . import api_router, get_runtime

router = api_router()


class ExtrasRequest(EdgeModel):
    """A1111's ExtrasBaseRequest: same names, defaults and bounds; unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    codeformer_visibility: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    codeformer_weight: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    upscaling_resize: float = Field(default=2, gt=0, allow_inf_nan=False)
    upscaling_resize_w: int = Field(default=512, ge=1)
    upscaling_resize_h: int = Field(default=512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    upscale_first: bool = False
    # Not in A1111's API (which never saves extras results): true writes them to
    # outputs/extras-images with A1111's extras naming, like its extras tab does.
    save_images: bool = False


class ExtrasSingleImageRequest(ExtrasRequest):
    image: str = ""


class FileData(EdgeModel):
    data: str
    name: str


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: list[FileData]  # noqa: N815 (A1111's field name)


def _params(request: ExtrasRequest, options: dict[str, Any]) -> ExtrasParams:
    """Request fields plus the ESRGAN_tile options that A1111 reads for tiled inference."""
    fields = {name: getattr(request, name) for name in ExtrasParams.__dataclass_fields__
              if name not in ("tiling", "operation_order")}
    tiling = TileSpec(int(options.get("ESRGAN_tile", 192)), int(options.get("ESRGAN_tile_overlap", 8)))
    order = tuple(str(step) for step in options.get("postprocessing_operation_order") or ())
    return ExtrasParams(**fields, tiling=tiling, operation_order=order)


def _extras_item(runtime: Runtime, images: list[Any], params: ExtrasParams, catalog: UpscalerCatalog,
                 faces: FaceRestorers, options: dict[str, Any]) -> WorkItem:
    """Runs here on the local worker; under --ray its RemoteExtras runs on a worker replica
    (the device's owner), which builds the same catalog from the same options."""
    def run(cancel) -> ExtrasResult:
        def done(index: int, _total: int) -> None:
            runtime.progress.batch_finished(index)  # /progress job_no counts finished images

        return run_extras(images, params, catalog, lambda: cancel.interrupted, done, faces)

    timestamp = job_timestamp()
    return WorkItem(run=run, label="extras", progress=ProgressSpec("extras", len(images), timestamp, 0),
                    remote=RemoteExtras(tuple(images), params, dict(options), timestamp))


async def _run(runtime: Runtime, request: ExtrasRequest, encoded: list[str],
               names: list[str] | None = None, priority: int = PRIORITY_NORMAL) -> tuple[list[str], str]:
    """Validate, decode, upscale on the worker at the caller's priority, encode: (images, html_info)."""
    options = runtime.options.snapshot()
    params = _params(request, options)
    await prefetch(runtime.weights, extras_weights(runtime.settings, options, params))  # first use, before queueing
    catalog = UpscalerCatalog.from_settings(runtime.settings, runtime.postprocess_models, options)
    faces = FaceRestorers.from_settings(runtime.settings, runtime.postprocess_models)
    check_params(params, catalog, faces)
    if str(options.get("samples_format", "png")).lower() not in SUPPORTED_FORMATS:
        raise InvalidImageFormat(str(options.get("samples_format")))
    images = await run_in_threadpool(lambda: [decode_image_base64(text) for text in encoded])
    for image in images:
        check_output_size(image, params)
    result = await runtime.scheduler.run(_extras_item(runtime, images, params, catalog, faces, options), priority)
    if request.save_images:
        await run_in_threadpool(_save_all, runtime, result.images, options, names)
    return await run_in_threadpool(_encode_all, result.images, options), result.html_info


def _save_all(runtime: Runtime, images: list[ProcessedImage], options: dict[str, Any], names: list[str] | None) -> None:
    from ..postprocess.saving import save_extras

    for index, done in enumerate(images):
        name = names[index] if names and index < len(names) else None
        save_extras(done.image, done.infotext, done.info, options, runtime.settings.data_dir, name)


def _encode_all(images: list[ProcessedImage], options: dict[str, Any]) -> list[str]:
    return [_encode(done, options) for done in images]


def _encode(done: ProcessedImage, options: dict[str, Any]) -> str:
    """samples_format like A1111's API; PNG keeps every text item, JPEG/WEBP the parameters."""
    fmt = str(options.get("samples_format", "png")).lower()
    if not options.get("enable_pnginfo", True):
        return encode_image_base64(done.image, fmt, **encoding_options(options))
    texts = {k: v for k, v in done.info.items() if isinstance(k, str) and isinstance(v, str) and k != "parameters"}
    infotext = done.info.get("parameters") if isinstance(done.info.get("parameters"), str) else None
    extra = texts if fmt == "png" else None
    return encode_image_base64(done.image, fmt, infotext=infotext, extra_text=extra, **encoding_options(options))


@router.post("/sdapi/v1/extra-single-image")
async def extra_single_image(
    request: ExtrasSingleImageRequest, http: Request, runtime: Runtime = Depends(get_runtime),
) -> dict[str, Any]:
    images, html_info = await _run(runtime, request, [request.image], priority=request_context(http).priority)
    return {"html_info": html_info, "image": images[0] if images else None}


@router.post("/sdapi/v1/extra-batch-images")
async def extra_batch_images(
    request: ExtrasBatchImagesRequest, http: Request, runtime: Runtime = Depends(get_runtime),
) -> dict[str, Any]:
    images, html_info = await _run(runtime, request, [item.data for item in request.imageList],
                                   [item.name for item in request.imageList], request_context(http).priority)
    return {"html_info": html_info, "images": images}

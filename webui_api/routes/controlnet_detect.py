"""GET /controlnet/module_list and POST /controlnet/detect, as sd-webui-controlnet serves them.

module_list answers `{"module_list": [...], "module_detail": {name: {model_free, sliders}}}`,
with UI aliases instead of internal names when `alias_names` is true. detect runs one
preprocessor over base64 images and answers `{"info": "Success", "images": [raw base64 PNG]}`
(plus `"poses"`, the OpenPose JSON per image, for the openpose modules).
Besides the extension's `controlnet_input_images` it accepts `controlnet_images`, the name the
webuiapi client sends (the real extension answers that client 422 "No image selected").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import ConfigDict, Field

from ..controlnet.preprocessors import (
    AnnotatorCache,
    PoseCallback,
    annotator_dir_for,
    list_modules,
    module_info,
    run_preprocessor,
)
from ..errors import ValidationFailed
from ..postprocess.encode import decode_image_base64, encode_image_base64
from ..runtime import Runtime
from ..schemas.edge import EdgeModel
from . import api_router, get_runtime

router = api_router()

# the extension refuses these in /detect: their output is an embedding, not an image
NOT_DETECTABLE = frozenset({"clip_vision", "revision_clipvision", "revision_ignore_prompt", "ip-adapter-auto"})


class DetectRequest(EdgeModel):
    """The extension's /controlnet/detect body; unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)  # webuiapi's name for the same list
    controlnet_processor_res: float = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = Field(default_factory=list)
    low_vram: bool = False

    def images(self) -> list[str]:
        return self.controlnet_input_images or self.controlnet_images


@router.get("/controlnet/module_list")
async def module_list(alias_names: bool = False) -> dict[str, Any]:
    modules = list_modules()
    names = [m.alias if alias_names else m.name for m in modules]
    return {"module_list": names, "module_detail": {n: m.detail() for n, m in zip(names, modules, strict=True)}}


@router.post("/controlnet/detect")
async def detect(body: DetectRequest, request: Request, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    _check_module(body.controlnet_module)
    encoded = body.images()
    if not encoded:
        raise ValidationFailed("No image selected", errors="send base64 images in controlnet_input_images")
    cache = _annotator_cache(request, runtime)
    annotator_dir = annotator_dir_for(runtime.settings)
    poses: list[dict[str, Any]] = []
    maps = await run_in_threadpool(_detect_all, body, encoded, annotator_dir, cache, poses.append)
    answer: dict[str, Any] = {"info": "Success"}
    if poses and "openpose" in body.controlnet_module:  # the extension's test, on the name as sent
        answer["poses"] = poses
    answer["images"] = maps
    return answer


def _check_module(name: str) -> None:
    """422 "Module not available" for unknown names, "Module not supported" for embedding ones."""
    if name in NOT_DETECTABLE:
        raise ValidationFailed("Module not supported", errors=f"{name!r} produces an embedding, not an image")
    module_info(name)


def _detect_all(
    body: DetectRequest, encoded: list[str], annotator_dir: Path, cache: AnnotatorCache, on_pose: PoseCallback
) -> list[str]:
    """Decode, preprocess and encode every image (off the event loop: models can take seconds)."""
    results = []
    for text in encoded:
        pixels = _decode_rgb(text)
        detected = run_preprocessor(
            body.controlnet_module, pixels, body.controlnet_processor_res,
            body.controlnet_threshold_a, body.controlnet_threshold_b, annotator_dir, cache=cache, on_pose=on_pose,
        )
        results.append(encode_image_base64(Image.fromarray(detected), "png"))
    return results


def _decode_rgb(text: str) -> np.ndarray:
    """A client image as uint8 RGB or RGBA (alpha is composited on white by the preprocessors)."""
    image = decode_image_base64(text)
    return np.asarray(image if image.mode == "RGBA" else image.convert("RGB"), dtype=np.uint8)


def _annotator_cache(request: Request, runtime: Runtime) -> AnnotatorCache:
    """The server's one AnnotatorCache: the engine's ControlNet library's, which generation uses
    too (so a network loaded by /detect serves the next job, and unload frees both). An engine
    without that library (a stand-in) gets one kept on the app, created on the event loop thread."""
    library = getattr(runtime.engine, "controlnets", None)
    if library is not None:
        return library.annotators
    cache = getattr(request.app.state, "annotator_cache", None)
    if cache is None:
        cache = AnnotatorCache()
        request.app.state.annotator_cache = cache
    return cache

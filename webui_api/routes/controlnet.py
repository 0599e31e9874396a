"""sd-webui-controlnet's routes at the host root (/controlnet/version, model_list,
control_types, settings) and the hosted-endpoint style payload POST /v1/controlnet.

(/controlnet/module_list and /controlnet/detect live with the preprocessors.)
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..auth import request_context
from ..errors import ApiError, NotFound, ValidationFailed
from ..generation.runs import run_txt2img
from ..runtime import Runtime
from ..schemas.generation import Txt2ImgRequest
from . import api_router, get_runtime

router = api_router()

API_VERSION = 3  # what the extension's /controlnet/version answers (external_code.get_api_version)
DEFAULT_UNIT_COUNT = 3  # the extension's control_net_unit_count default

# tag -> (candidate modules, words a model's name must contain); "none" is always first
CONTROL_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Canny": (("canny", "invert"), ("canny",)),
    "Depth": (("depth_midas", "depth_leres", "depth_leres++", "depth_zoe", "depth_anything"), ("depth",)),
    "NormalMap": (("normal_bae", "normal_midas"), ("normalmap", "normal")),
    "OpenPose": (
        ("openpose", "openpose_face", "openpose_faceonly", "openpose_full", "openpose_hand"),
        ("openpose", "densepose"),
    ),
    "MLSD": (("mlsd", "invert"), ("mlsd",)),
    "Lineart": (("lineart_standard", "lineart_realistic", "lineart_coarse", "lineart_anime", "invert"), ("lineart",)),
    "SoftEdge": (("softedge_hed", "softedge_hedsafe", "softedge_pidinet", "softedge_pidisafe"), ("softedge", "hed")),
    "Scribble/Sketch": (("scribble_hed", "scribble_pidinet", "scribble_xdog", "invert"), ("scribble", "sketch")),
    "Segmentation": (("seg_ofade20k", "seg_ofcoco", "seg_ufade20k"), ("segmentation", "seg")),
    "Shuffle": (("shuffle",), ("shuffle",)),
    "Tile/Blur": (("tile_resample", "blur_gaussian"), ("tile", "blur")),
    "Recolor": (("recolor_luminance", "recolor_intensity"), ("recolor",)),
}

# endpoint controlnet_type -> (module, words a model's name must contain)
ENDPOINT_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "canny_edge": ("canny", ("canny",)),
    "pose": ("openpose", ("openpose", "pose")),
    "depth": ("depth_midas", ("depth",)),
    "scribble": ("scribble_hed", ("scribble",)),
    "segmentation": ("seg_ufade20k", ("seg",)),
    "normal": ("normal_bae", ("normal",)),
    "hed": ("softedge_hed", ("hed", "softedge")),
    "mlsd": ("mlsd", ("mlsd",)),
}


def _catalog(runtime: Runtime) -> Any:
    library = getattr(runtime.engine, "controlnets", None)
    return library.catalog if library is not None else None


def _titles(runtime: Runtime) -> list[str]:
    catalog = _catalog(runtime)
    return catalog.titles() if catalog is not None else []


def available_modules(candidates: tuple[str, ...]) -> list[str]:
    """The candidates the installed preprocessors provide (canonical names)."""
    from ..controlnet.preprocessors import find_module

    found = []
    for name in candidates:
        try:
            found.append(find_module(name))
        except ApiError:
            continue
    return list(dict.fromkeys(found))


@router.get("/controlnet/version")
async def version() -> dict[str, int]:
    return {"version": API_VERSION}


@router.get("/controlnet/model_list")
async def model_list(update: bool = True, runtime: Runtime = Depends(get_runtime)) -> dict[str, list[str]]:
    """Titles "name [hash]"; update=true rescans the folders first (as the extension)."""
    catalog = _catalog(runtime)
    if catalog is not None and update:
        await run_in_threadpool(catalog.refresh)
    return {"model_list": _titles(runtime)}


@router.get("/controlnet/settings")
async def settings(runtime: Runtime = Depends(get_runtime)) -> dict[str, int]:
    count = runtime.options.snapshot().get("control_net_unit_count")
    return {"control_net_unit_count": int(count or DEFAULT_UNIT_COUNT)}


def control_type_entry(modules: list[str], models: list[str]) -> dict[str, Any]:
    """The extension's defaults: the first real module / model (a v1.1 "11" model preferred)."""
    module_list = ["none", *[m for m in modules if m != "none"]]
    model_list = ["None", *models]
    default_model = next((m for m in models if "11" in m.split("[")[0]), models[0] if models else "None")
    return {
        "module_list": module_list,
        "model_list": model_list,
        "default_option": module_list[1] if len(module_list) > 1 else "none",
        "default_model": default_model,
    }


@router.get("/controlnet/control_types")
async def control_types(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    titles = _titles(runtime)
    types = {}
    for tag, (modules, words) in CONTROL_TYPES.items():
        models = [t for t in titles if any(w in t.lower() for w in words)]
        types[tag] = control_type_entry(available_modules(modules), models)
    every_module = [m for modules, _ in CONTROL_TYPES.values() for m in modules]
    all_entry = control_type_entry(available_modules(tuple(every_module)), titles)
    all_entry.update(default_option="none", default_model="None")
    return {"control_types": {"All": all_entry, **types}}


# ---------------------------------------------------------------------------
# POST /v1/controlnet: the hosted-endpoint payload
# ---------------------------------------------------------------------------


class EndpointControlRequest(BaseModel):
    """{"inputs": prompt, "controlnet_type", "image", ...}; a `parameters` object, as some
    endpoint clients nest the settings, is merged in."""

    model_config = ConfigDict(extra="ignore")

    inputs: str
    negative_prompt: str = ""
    controlnet_type: str
    image: str
    num_inference_steps: int = Field(30, ge=1, le=150)
    guidance_scale: float = Field(7.5, ge=0, le=30)
    height: int = Field(512, ge=64, le=2048)
    width: int = Field(512, ge=64, le=2048)
    controlnet_conditioning_scale: float = Field(1.0, ge=0, le=2)
    seed: int | None = -1
    sampler_name: str = "Euler a"
    preprocess: bool = True  # false: `image` already is the control map (module "none")

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, received {value}")
        return value


def endpoint_unit(body: EndpointControlRequest, titles: list[str]) -> dict[str, Any]:
    """The one ControlNet unit an endpoint request means (4xx for an unknown type or when no
    installed model fits it)."""
    kind = body.controlnet_type.strip().lower()
    if kind not in ENDPOINT_TYPES:
        raise NotFound(f"controlnet_type {body.controlnet_type!r} is unknown; expected one of {sorted(ENDPOINT_TYPES)}")
    module, words = ENDPOINT_TYPES[kind]
    model = next((t for t in titles if any(w in t.lower() for w in words)), None)
    if model is None:
        raise NotFound(
            f"no installed ControlNet model fits controlnet_type {kind!r} (its name must contain one of "
            f"{list(words)}); installed: {titles or 'none'}"
        )
    return {
        "enabled": True, "image": body.image, "module": module if body.preprocess else "none", "model": model,
        "weight": body.controlnet_conditioning_scale, "resize_mode": "Crop and Resize", "save_detected_map": False,
    }


def endpoint_txt2img(body: EndpointControlRequest, titles: list[str]) -> Txt2ImgRequest:
    return Txt2ImgRequest(
        prompt=body.inputs, negative_prompt=body.negative_prompt, steps=body.num_inference_steps,
        cfg_scale=body.guidance_scale, width=body.width, height=body.height, seed=body.seed,
        sampler_name=body.sampler_name, override_settings={"samples_format": "png"},
        alwayson_scripts={"controlnet": {"args": [endpoint_unit(body, titles)]}},
    )


def _merged(payload: dict[str, Any]) -> dict[str, Any]:
    nested = payload.get("parameters")
    return {**payload, **nested} if isinstance(nested, dict) else payload


@router.post("/v1/controlnet")
async def endpoint_controlnet(payload: dict[str, Any], http: Request, runtime: Runtime = Depends(get_runtime)) -> Any:
    """txt2img with one unit; PNG bytes for `Accept: image/png`, else A1111's JSON."""
    try:
        body = EndpointControlRequest.model_validate(_merged(payload))
    except ValidationError as exc:
        raise ValidationFailed(f"POST /v1/controlnet: {exc.error_count()} invalid field(s)", errors=str(exc)) from exc
    answer = await run_txt2img(endpoint_txt2img(body, _titles(runtime)), runtime, context=request_context(http))
    if "image/png" in http.headers.get("accept", ""):
        return Response(content=base64.b64decode(answer["images"][0]), media_type="image/png")
    return {"images": answer["images"], "parameters": body.model_dump(exclude={"image"}), "info": answer["info"]}

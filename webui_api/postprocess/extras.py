"""The extras tab's work on finished images: A1111's "Upscale", "GFPGAN" and "CodeFormer"
postprocessing steps, in A1111's order (its script order 1000 / 2000 / 3000, or the
postprocessing_operation_order option).

Only PIL, the upscaler catalog and the face restorers here (no HTTP): routes/extras.py decodes the request, runs
`run_extras` on the scheduler's worker, and encodes what comes back. The info written into each
image ("postprocessing" text) and the html_info reply follow A1111's formatting exactly, since
clients show or parse them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from webui_api.errors import BadRequest
from webui_api.postprocess.encode import read_image_info
from webui_api.postprocess.face_restore.restorers import FaceRestorers, FaceRestorerUnavailable, RestoreRequest
from webui_api.postprocess.upscale import TileSpec, UpscalerCatalog


@dataclass(frozen=True)
class ExtrasParams:
    """The request fields that drive the work (A1111's ExtrasBaseRequest, names kept).

    `upscaling_resize` keeps the number as received: A1111 writes it into the info as given
    (2 when defaulted, 2.0 when a client sent 2 and pydantic made it a float).
    """

    resize_mode: int = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False  # accepted and unused, as in A1111's API
    tiling: TileSpec = field(default_factory=TileSpec)
    operation_order: tuple[str, ...] = ()  # A1111's postprocessing_operation_order option

    def __post_init__(self) -> None:
        if self.resize_mode not in (0, 1):
            raise ValueError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {self.resize_mode!r}")
        if not self.upscaling_resize > 0:
            raise ValueError(f"upscaling_resize must be > 0, got {self.upscaling_resize!r}")


@dataclass
class ProcessedImage:
    """One result: pixels plus the PNG info items it carries (existing ones + "postprocessing")."""

    image: Image.Image
    info: dict[str, Any]
    infotext: str


@dataclass
class ExtrasResult:
    images: list[ProcessedImage]
    html_info: str


def _upscaler_name(name: str | None) -> str | None:
    """A1111 treats the upscaler "None" as no upscaler at all."""
    return None if name in (None, "None") else name


STEP_ORDER = ("Upscale", "GFPGAN", "CodeFormer")  # A1111's postprocessing script names, by `order`


def check_params(params: ExtrasParams, catalog: UpscalerCatalog, faces: FaceRestorers | None = None) -> None:
    """Refuse unknown upscalers and unusable face restorers before any work starts."""
    for name in (_upscaler_name(params.upscaler_1), _upscaler_name(params.upscaler_2)):
        if name is not None:
            catalog.find(name)
    for model, visibility in (("GFPGAN", params.gfpgan_visibility), ("CodeFormer", params.codeformer_visibility)):
        if visibility > 0:
            if faces is None:
                raise FaceRestorerUnavailable(f"{model} face restoration is not available in this context")
            faces.check(model)


def step_order(params: ExtrasParams) -> list[str]:
    """Steps named in postprocessing_operation_order first (in that order), then the rest by
    A1111's script order."""
    named = [step for step in params.operation_order if step in STEP_ORDER]
    return list(dict.fromkeys(named + list(STEP_ORDER)))


def run_extras(
    images: Sequence[Image.Image],
    params: ExtrasParams,
    catalog: UpscalerCatalog,
    should_stop: Callable[[], bool] = lambda: False,
    on_done: Callable[[int, int], None] = lambda index, total: None,
    faces: FaceRestorers | None = None,
) -> ExtrasResult:
    """Process each image like A1111's run_postprocessing; html_info is the last image's text.

    `should_stop` is polled between images (an interrupt keeps what is done); `on_done`
    reports (index, total) after each image, for /progress's job_no.
    """
    check_params(params, catalog, faces)
    done: list[ProcessedImage] = []
    for index, image in enumerate(images):
        if should_stop():
            break
        done.append(process_one(image, params, catalog, faces))
        on_done(index, len(images))
    infotext = done[-1].infotext if done else ""
    return ExtrasResult(done, infotext_to_html(infotext))


def process_one(image: Image.Image, params: ExtrasParams, catalog: UpscalerCatalog,
                faces: FaceRestorers | None = None) -> ProcessedImage:
    """Run the steps on one image and attach its info: the source's items, then "postprocessing"."""
    parameters, items = read_image_info(image)
    if parameters:
        items["parameters"] = parameters
    result = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    info: dict[str, Any] = {}
    for step in step_order(params):
        if step == "Upscale":
            result = upscale_step(result, params, catalog, info)
        elif faces is not None:
            result = face_step(result, step, params, faces, info)
    text = postprocessing_infotext(info)
    return ProcessedImage(result, {**items, "postprocessing": text}, text)


def upscale_step(
    image: Image.Image, params: ExtrasParams, catalog: UpscalerCatalog, info: dict[str, Any]
) -> Image.Image:
    """Upscaler 1, blended with upscaler 2 by its visibility; nothing when upscaler 1 is "None"."""
    first, second = _upscaler_name(params.upscaler_1), _upscaler_name(params.upscaler_2)
    if first is None:
        return image
    result = _upscale_once(image, first, params, catalog, info)
    info["Postprocess upscaler"] = catalog.find(first).name
    if second is not None and params.extras_upscaler_2_visibility > 0:
        other = _upscale_once(image, second, params, catalog, info)
        other = other if other.mode == result.mode else other.convert(result.mode)
        result = Image.blend(result, other, params.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = catalog.find(second).name
    return result


def face_step(
    image: Image.Image, model: str, params: ExtrasParams, faces: FaceRestorers, info: dict[str, Any]
) -> Image.Image:
    """A1111's GFPGAN / CodeFormer postprocessing: restore, blend with the input by the
    visibility (below 1), record visibility (and CodeFormer's weight) rounded to 3 places."""
    visibility = params.gfpgan_visibility if model == "GFPGAN" else params.codeformer_visibility
    if visibility == 0:
        return image
    restored = faces.restore(image.convert("RGB"), RestoreRequest(model, params.codeformer_weight))
    if visibility < 1.0:
        restored = Image.blend(image if image.mode == "RGB" else image.convert("RGB"), restored, visibility)
    info[f"{model} visibility"] = round(visibility, 3)
    if model == "CodeFormer":
        info["CodeFormer weight"] = round(params.codeformer_weight, 3)
    return restored


def _upscale_once(
    image: Image.Image, name: str, params: ExtrasParams, catalog: UpscalerCatalog, info: dict[str, Any]
) -> Image.Image:
    """Scale by a factor (mode 0) or to cover w x h (mode 1), then centre-crop when asked."""
    if params.resize_mode == 1:
        factor = max(params.upscaling_resize_w / image.width, params.upscaling_resize_h / image.height)
        info["Postprocess upscale to"] = f"{params.upscaling_resize_w}x{params.upscaling_resize_h}"
    else:
        factor = params.upscaling_resize
        info["Postprocess upscale by"] = params.upscaling_resize
    result = catalog.upscale(image, name, factor, params.tiling)
    if params.resize_mode == 1 and params.upscaling_crop:
        result = centre_crop(result, params.upscaling_resize_w, params.upscaling_resize_h)
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result


def centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's crop: an RGB canvas of the target size with the image pasted centred on it."""
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, box=(width // 2 - image.width // 2, height // 2 - image.height // 2))
    return canvas


def quote_value(value: Any) -> Any:
    """A1111's infotext quoting: JSON-quote text holding a comma, colon or newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(value, ensure_ascii=False)


def postprocessing_infotext(info: dict[str, Any]) -> str:
    """"key: value" pairs joined by ", " (a key equal to its value is written once; None skipped)."""
    parts = [
        key if key == value else f"{key}: {quote_value(value)}" for key, value in info.items() if value is not None
    ]
    return ", ".join(parts)


def infotext_to_html(text: str) -> str:
    """A1111's plaintext_to_html: escaped lines joined by "<br>\\n" inside <p>...</p>."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


MAX_OUTPUT_SIDE = 16384  # an 8x upscale of a 2048 px image; beyond this a typo is likelier than intent


def check_output_size(image: Image.Image, params: ExtrasParams) -> None:
    """Refuse results no machine could hold, e.g. upscaling_resize=1000 by mistake."""
    if params.resize_mode == 1:
        size = (params.upscaling_resize_w, params.upscaling_resize_h)
    else:
        size = (int(image.width * params.upscaling_resize), int(image.height * params.upscaling_resize))
    if max(size) > MAX_OUTPUT_SIDE:
        raise BadRequest(
            f"the upscaled image would be {size[0]}x{size[1]}",
            errors=f"each side must stay <= {MAX_OUTPUT_SIDE}; the input is {image.width}x{image.height}",
        )
    from ..pixel_budget import check_image_pixels

    check_image_pixels("the upscaled image", *size)  # the one image pixel budget (--max-input-pixels)

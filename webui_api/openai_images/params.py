"""OpenAI images parameters and how they become A1111 txt2img / img2img fields.

OpenAI's parameters have no Stable Diffusion meaning of their own, so each is mapped to the
nearest A1111 field and the mapping is documented in docs/api-compat.md:

- `model`: a checkpoint (any of its A1111 aliases); OpenAI's own model names (dall-e-*,
  gpt-image-*) and no model at all mean the server's current checkpoint.
- `size`: "WIDTHxHEIGHT" in multiples of 8; absent or "auto" is the checkpoint's native size
  (edits and variations: the input image's size).
- `quality`: the step count (low 12, standard/medium/auto 20, hd/high 30).
- `style`: the CFG scale (vivid 7, natural 5).
- `n`: batch_size; `output_format` / `output_compression`: samples_format / jpeg_quality.

A1111's own sampling fields (negative_prompt, seed, steps, cfg_scale, sampler_name,
scheduler, denoising_strength) are accepted as extensions and win over the mapped values;
clients of the `openai` package send them with `extra_body`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import OpenAIParamError

QUALITY_STEPS = {"low": 12, "medium": 20, "standard": 20, "auto": 20, "high": 30, "hd": 30}
STYLE_CFG_SCALE = {"vivid": 7.0, "natural": 5.0}
SAMPLES_FORMAT = {"png": "png", "jpeg": "jpg", "webp": "webp"}
NATIVE_SIDE = {"sdxl": 1024, "sdxl-refiner": 1024, "sd2-v": 768}  # architecture/family -> side; others 512
DEFAULT_SIDE = 512
MIN_SIDE, MAX_SIDE = 64, 8192
EDIT_DENOISING = {"masked": 1.0, "unmasked": 0.75, "variation": 0.6}


class ImageOptions(BaseModel):
    """What generations, edits and variations share. Unknown fields are ignored, as OpenAI's
    newer fields are (background, moderation, user ...)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str | None = Field(None, description="A checkpoint; OpenAI model names mean the current one")
    n: int = Field(1, ge=1, le=10, description="Number of images (batch_size)")
    size: str | None = Field(None, description="WIDTHxHEIGHT in multiples of 8, or auto")
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = None
    style: Literal["vivid", "natural"] | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    stream: bool | None = None
    user: str | None = None
    # A1111 extensions: win over what quality/style map to
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = None
    sampler_name: str | None = None
    scheduler: str | None = None


class GenerationBody(ImageOptions):
    """POST /v1/images/generations (JSON)."""

    prompt: str = Field(min_length=1)


class EditForm(ImageOptions):
    """POST /v1/images/edits (multipart; the image and mask files come beside these fields)."""

    prompt: str = Field(min_length=1)
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0)
    mask_blur: int | None = Field(None, ge=0, le=64)


class VariationForm(ImageOptions):
    """POST /v1/images/variations (multipart): no prompt in OpenAI's API; one is accepted here."""

    prompt: str = ""
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0)


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error body, which every refusal of these routes carries."""

    error: ErrorDetail


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "webui-api"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def is_openai_model_name(name: str | None) -> bool:
    """True for no model and for OpenAI's own names: those mean the current checkpoint."""
    return not name or name.startswith(("dall-e", "gpt-image"))


def native_size(family: str | None, architecture: str | None = None) -> tuple[int, int]:
    """The square size a checkpoint was trained at: SDXL 1024, SD2 768-v 768, else 512."""
    side = NATIVE_SIDE.get(architecture or "") or NATIVE_SIDE.get(family or "") or DEFAULT_SIDE
    return side, side


def parse_size(size: str | None, default: tuple[int, int]) -> tuple[int, int]:
    """'1024x768' -> (1024, 768); absent or 'auto' -> `default`; anything else is a 400."""
    if size is None or size.strip().lower() in ("", "auto"):
        return default
    width_text, sep, height_text = size.strip().lower().partition("x")
    if not sep or not width_text.isdigit() or not height_text.isdigit():
        raise OpenAIParamError(f"Invalid size {size!r}: expected WIDTHxHEIGHT such as '512x512', or 'auto'", "size")
    width, height = int(width_text), int(height_text)
    for side in (width, height):
        if side % 8 or not MIN_SIDE <= side <= MAX_SIDE:
            raise OpenAIParamError(
                f"Invalid size {size!r}: each side must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}", "size")
    return width, height


def snap_to_multiple_of_8(width: int, height: int) -> tuple[int, int]:
    """An input image's size as a generation size: down to a multiple of 8, at least 64."""
    return max(MIN_SIDE, width - width % 8), max(MIN_SIDE, height - height % 8)


def check_supported(options: ImageOptions) -> None:
    """Refuse what this server cannot do in OpenAI's words, before any work."""
    if options.stream:
        raise OpenAIParamError("Streaming partial images is not supported; leave stream unset", "stream")


def sampling_fields(options: ImageOptions, prompt: str, width: int, height: int) -> dict[str, Any]:
    """The A1111 fields of one request: size, batch, steps, CFG, sampler, seed, prompts."""
    fields: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": options.negative_prompt or "",
        "width": width,
        "height": height,
        "batch_size": options.n,
        "n_iter": 1,
        "steps": options.steps or QUALITY_STEPS[options.quality or "standard"],
        "cfg_scale": options.cfg_scale if options.cfg_scale is not None else STYLE_CFG_SCALE[options.style or "vivid"],
        "seed": options.seed if options.seed is not None else -1,
        "send_images": True,
        "save_images": False,
    }
    if options.sampler_name:
        fields["sampler_name"] = options.sampler_name
    if options.scheduler:
        fields["scheduler"] = options.scheduler
    return fields


def output_overrides(options: ImageOptions, checkpoint_title: str | None) -> dict[str, Any]:
    """override_settings: the checkpoint `model` picked, the image format and its quality."""
    overrides: dict[str, Any] = {"samples_format": SAMPLES_FORMAT[options.output_format or "png"]}
    if options.output_compression is not None:
        overrides["jpeg_quality"] = max(1, 100 - options.output_compression)
    if checkpoint_title:
        overrides["sd_model_checkpoint"] = checkpoint_title
    return overrides


def txt2img_fields(body: GenerationBody, size: tuple[int, int], checkpoint_title: str | None) -> dict[str, Any]:
    """A /sdapi/v1/txt2img body for a generation request."""
    return {**sampling_fields(body, body.prompt, *size), "override_settings": output_overrides(body, checkpoint_title)}


def img2img_fields(
    form: EditForm | VariationForm, size: tuple[int, int], checkpoint_title: str | None,
    init_image: str, mask: str | None, purpose: str,
) -> dict[str, Any]:
    """A /sdapi/v1/img2img body for an edit (`purpose` masked/unmasked) or a variation.

    A masked edit repaints the masked area from scratch (denoising 1.0), as OpenAI's edits
    replace it; an unmasked edit keeps A1111's 0.75; a variation 0.6 stays close to the input."""
    denoising = form.denoising_strength if form.denoising_strength is not None else EDIT_DENOISING[purpose]
    fields = {
        **sampling_fields(form, form.prompt, *size),
        "override_settings": output_overrides(form, checkpoint_title),
        "init_images": [init_image],
        "denoising_strength": denoising,
        "resize_mode": 0,
    }
    if mask is not None:
        fields.update(mask=mask, inpainting_fill=1, inpaint_full_res=False,
                      mask_blur=getattr(form, "mask_blur", None) if getattr(form, "mask_blur", None) is not None else 4)
    return fields


def images_response(a1111: dict[str, Any], options: ImageOptions, size: tuple[int, int], created: int,
                    urls: list[str] | None = None) -> dict[str, Any]:
    """OpenAI's ImagesResponse from an A1111 generation response (base64 images or their URLs)."""
    if urls is not None:
        data = [{"url": url} for url in urls]
    else:
        data = [{"b64_json": image} for image in a1111.get("images") or []]
    return {
        "created": created,
        "data": data,
        "output_format": options.output_format or "png",
        "quality": options.quality,
        "size": f"{size[0]}x{size[1]}",
    }

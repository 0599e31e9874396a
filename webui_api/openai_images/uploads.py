"""Uploaded images and masks of /v1/images/edits and /variations, turned into what A1111's
img2img takes: a base64 init image and an inpaint mask that is white where to repaint.

OpenAI's masks say "edit here" with transparency (alpha 0); without a mask, the transparent
pixels of the image itself are the area to edit. A mask without an alpha channel is read the
A1111 way (white = repaint), so masks made for A1111 work too.
"""

from __future__ import annotations

import base64

from PIL import Image

from ..errors import BadRequest
from ..postprocess.encode import decode_image_base64, encode_image_base64
from ..serving.guards import check_input_images
from .errors import OpenAIParamError

EDIT_ALPHA = 0  # OpenAI: fully transparent pixels are the ones to edit


def upload_base64(data: bytes) -> str:
    """The uploaded file as it came, base64-encoded (the img2img pipeline decodes it again)."""
    return base64.b64encode(data).decode("ascii")


def decode_upload(data_b64: str, param: str, max_input_pixels: int) -> Image.Image:
    """Decode an uploaded image after its header passed the input pixel guard; a file that is
    not an image is a 400 naming the form field."""
    if not data_b64:
        raise OpenAIParamError(f"The {param} file is empty", param)
    try:
        check_input_images([data_b64], max_input_pixels)  # over the pixel limit: 413 as on /sdapi
        return decode_image_base64(data_b64)
    except BadRequest as exc:  # unreadable (the header check or the decoder said so)
        raise OpenAIParamError(f"The {param} file is not a readable image ({exc.errors or exc.detail})", param,
                               "invalid_image") from exc


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def transparent_area(image: Image.Image) -> Image.Image | None:
    """An A1111 mask (L, white = repaint) of the image's fully transparent pixels; None when it has none."""
    if not has_alpha(image):
        return None
    alpha = image.convert("RGBA").getchannel("A")
    mask = alpha.point(lambda value: 255 if value == EDIT_ALPHA else 0, mode="L")
    return mask if mask.getbbox() is not None else None


def edit_mask(image: Image.Image, mask: Image.Image | None) -> Image.Image | None:
    """The repaint mask of an edit: from the mask file (its transparency, or white where it has
    none), else from the image's own transparency; None means edit the whole image."""
    if mask is None:
        return transparent_area(image)
    if mask.size != image.size:
        raise OpenAIParamError(
            f"The mask ({mask.size[0]}x{mask.size[1]}) must have the same size as the image "
            f"({image.size[0]}x{image.size[1]})", "mask")
    if has_alpha(mask):
        return transparent_area(mask) or Image.new("L", mask.size, 0)
    return mask.convert("L")


def mask_base64(mask: Image.Image) -> str:
    return encode_image_base64(mask, "png")


def image_of_upload(data: bytes, param: str, max_input_pixels: int) -> tuple[str, Image.Image]:
    """(base64 as sent, decoded image) of one uploaded file."""
    data_b64 = upload_base64(data)
    return data_b64, decode_upload(data_b64, param, max_input_pixels)

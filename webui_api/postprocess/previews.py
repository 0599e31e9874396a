"""Live preview images as A1111 sends them: base64 PNG in /sdapi/v1/progress, and a data URI
in `live_previews_image_format` (png, jpeg or webp) in /internal/progress.

Encoded on the worker once per preview, so the many readers of a preview never encode it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

from PIL import Image

from ..progress import EncodedPreview

LIVE_PREVIEW_FORMATS = ("png", "jpeg", "webp")
SMALL_PNG_SIDE = 256  # A1111 optimizes PNG previews up to this size and compresses larger ones fast


def encode_preview(image: Image.Image, live_format: str) -> EncodedPreview:
    """Both encodings of one preview; a PNG live format reuses the PNG bytes."""
    png = _encode(image, "png")
    fmt = live_format if live_format in LIVE_PREVIEW_FORMATS else "png"
    live = png if fmt == "png" else _encode(image, fmt)
    return EncodedPreview(png_base64=_b64(png), data_uri=f"data:image/{fmt};base64,{_b64(live)}")


def preview_encoder(live_format: Callable[[], Any]) -> Callable[[Image.Image], EncodedPreview]:
    """The tracker's encoder; `live_format()` reads the live_previews_image_format option at
    encoding time (A1111 reads it at every poll, so a change applies to the next preview)."""

    def encode(image: Image.Image) -> EncodedPreview:
        return encode_preview(image, str(live_format() or "png").lower())

    return encode


def _encode(image: Image.Image, fmt: str) -> bytes:
    """A1111's save arguments: PNG optimized when small, else compress_level 1; JPEG drops alpha."""
    if fmt == "jpeg" and image.mode in ("RGBA", "P", "LA"):
        image = image.convert("RGB")
    kwargs: dict[str, Any] = {}
    if fmt == "png":
        small = max(image.size) <= SMALL_PNG_SIDE
        kwargs = {"optimize": True} if small else {"optimize": False, "compress_level": 1}
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **kwargs)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

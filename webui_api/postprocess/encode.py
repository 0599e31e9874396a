"""Image bytes in and out: PNG/JPEG/WEBP with the infotext embedded, base64, and png-info.

This is the project's PIL seam for finished images. Metadata goes where A1111 puts it, so
tools that read A1111 images read ours: PNG text chunk "parameters"; JPEG/WEBP EXIF
UserComment in the "UNICODE" encoding (UTF-16 big-endian), laid out as piexif writes it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from PIL import Image, ImageOps, PngImagePlugin

from webui_api.errors import BadRequest, InvalidImage, InvalidImageFormat, LimitExceeded
from webui_api.pixel_budget import check_image_pixels, current_budget
from webui_api.postprocess.infotext import StyleLike, parse_infotext

SUPPORTED_FORMATS = ("png", "jpg", "jpeg", "webp")

# PIL info keys that are file mechanics, not generation info (never reported by png-info).
IGNORED_INFO_KEYS = frozenset({
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif",
    "loop", "background", "timestamp", "duration", "progressive", "progression",
    "icc_profile", "chromaticity", "photoshop",
})

_EXIF_IFD_POINTER = 0x8769
_USER_COMMENT_TAG = 0x9286
_TIFF_LONG, _TIFF_UNDEFINED = 4, 7
_USER_COMMENT_CODECS = {  # 8-byte character-code prefix -> Python codec (EXIF 2.3 table 9)
    b"ASCII\x00\x00\x00": "ascii",
    b"JIS\x00\x00\x00\x00\x00": "shift_jis",
    b"UNICODE\x00": "utf_16_be",
}
# zlib level 1: about 0.4x the encode time of PIL's default (6) at 1024x1024 for ~1.14x the
# bytes (scripts/bench_png_encode.py, docs/benchmarks.md); base64 PNGs are transient here.
DEFAULT_PNG_COMPRESS_LEVEL = 1
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_PIL_FORMAT = {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
_EXIF_READ_ERRORS = (SyntaxError, ValueError, OSError, struct.error)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# --------------------------------------------------------------------------- encoding


def encode_image(
    image: Image.Image,
    fmt: str = "png",
    *,
    infotext: str | None = None,
    quality: int = 80,
    extra_text: Mapping[str, str] | None = None,
    lossless: bool = False,
    png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL,
) -> bytes:
    """Encode one image in `fmt` with its infotext embedded, as A1111's API does.

    PNG gets text chunks ("parameters" first, then `extra_text`); JPEG and WEBP get an EXIF
    UserComment holding the infotext (an empty one when there is none, like A1111) and
    cannot carry `extra_text`. `quality` applies to JPEG/WEBP; `lossless` to WEBP only;
    `png_compress_level` (zlib 0-9) to PNG only.
    """
    key = fmt.lower() if isinstance(fmt, str) else fmt
    if key not in SUPPORTED_FORMATS:
        raise InvalidImageFormat(str(fmt))
    if key == "png":
        return _encode_png(image, _png_text_items(infotext, extra_text), _checked_level(png_compress_level))
    return _encode_with_exif(image, _PIL_FORMAT[key], infotext or "", quality, lossless)


def _png_text_items(infotext: str | None, extra_text: Mapping[str, str] | None) -> dict[str, str]:
    """Chunks to write, "parameters" first; a second "parameters" would be ambiguous."""
    items = {} if infotext is None else {"parameters": infotext}
    for key, value in (extra_text or {}).items():
        if key in items:
            raise ValueError(f"extra_text repeats the key {key!r}, which the infotext already sets")
        items[key] = value
    return items


def _checked_level(level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise ValueError(f"png_compress_level must be an int from 0 to 9, got {level!r}")
    return level


def encoding_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """encode_image keyword arguments from the server options (jpeg_quality, webp_lossless,
    png_compress_level), so every route encodes the same way."""
    return {
        "quality": int(options.get("jpeg_quality", 80)),
        "lossless": bool(options.get("webp_lossless", False)),
        "png_compress_level": _option_level(options.get("png_compress_level", DEFAULT_PNG_COMPRESS_LEVEL)),
    }


def _option_level(value: Any) -> int:
    """The option as a zlib level; a bad stored value is the client's doing (400), not ours."""
    try:
        return _checked_level(int(value))
    except (TypeError, ValueError) as exc:
        raise BadRequest("invalid png_compress_level option", errors=f"{exc} (received {value!r})") from exc


def _encode_png(image: Image.Image, text_items: Mapping[str, str], compress_level: int) -> bytes:
    """PIL writes Latin-1 text as tEXt and anything else as iTXt; readers see both as text."""
    info = PngImagePlugin.PngInfo()
    for key, value in text_items.items():
        info.add_text(key, value)
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info if text_items else None, compress_level=compress_level)
    return buffer.getvalue()


def _encode_with_exif(image: Image.Image, pil_format: str, text: str, quality: int, lossless: bool) -> bytes:
    """JPEG/WEBP: drop alpha and palettes (A1111 converts RGBA and P to RGB)."""
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    options: dict[str, Any] = {"exif": user_comment_exif(text), "quality": quality}
    if pil_format == "WEBP" and lossless:
        options["lossless"] = True
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def user_comment_exif(text: str) -> bytes:
    """A minimal EXIF block holding only UserComment = "UNICODE\\0" + UTF-16-BE text.

    The same tags piexif writes for A1111: big-endian TIFF header, IFD0 with a single pointer
    to the Exif IFD, Exif IFD with the one UNDEFINED-typed tag and its data after it. Unlike
    piexif we end the Exif IFD with its 4-byte next-IFD offset, as TIFF requires.
    """
    comment = b"UNICODE\x00" + text.encode("utf_16_be")
    ifd0_offset = 8
    exif_ifd_offset = ifd0_offset + 2 + 12 + 4
    data_offset = exif_ifd_offset + 2 + 12 + 4
    header = b"MM\x00\x2a" + struct.pack(">I", ifd0_offset)
    ifd0 = struct.pack(">HHHII", 1, _EXIF_IFD_POINTER, _TIFF_LONG, 1, exif_ifd_offset) + b"\x00" * 4
    exif_ifd = struct.pack(">HHHII", 1, _USER_COMMENT_TAG, _TIFF_UNDEFINED, len(comment), data_offset) + b"\x00" * 4
    return b"Exif\x00\x00" + header + ifd0 + exif_ifd + comment


def encode_image_base64(image: Image.Image, fmt: str = "png", **kwargs: Any) -> str:
    """Base64 text of `encode_image` without a data: prefix (what A1111's API returns)."""
    return base64.b64encode(encode_image(image, fmt, **kwargs)).decode("ascii")


# --------------------------------------------------------------------------- decoding


def decode_image_base64(data: str, what: str = "the image") -> Image.Image:
    """Decode a client's base64 image into a fully loaded PIL image: the ONE decoder of the API.

    Lenient like A1111 on the text (data: URL prefix, embedded whitespace) and more lenient on
    padding; http(s) URLs are refused because this server never fetches anything. The header
    is read first and the pixel count checked against the request's pixel budget
    (webui_api.pixel_budget) before a single pixel is decoded, so a small file that expands
    to gigapixels is a 413, not an out-of-memory. EXIF orientation is applied and
    palette/RGB transparency becomes RGBA, as A1111 does.
    """
    raw = base64_image_bytes(data)
    return _fix_orientation_and_transparency(_open_fully(raw, what))


def base64_image_bytes(data: Any) -> bytes:
    """The bytes of a client's base64 image text (data: URL, whitespace, URL-safe, no padding)."""
    if not isinstance(data, str):
        raise InvalidImage(errors=f"expected a base64 string, received {type(data).__name__}")
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise InvalidImage("Requests not allowed", errors="this server does not fetch image URLs")
    return _base64_bytes(_strip_data_url(text))


def image_size_base64(data: Any, what: str = "the image") -> tuple[int, int]:
    """(width, height) of a client's base64 image from its header alone (no pixel decoded)."""
    with _open_header(base64_image_bytes(data), what) as image:
        return image.size


def _strip_data_url(text: str) -> str:
    """'data:image/png;base64,AAAA' -> 'AAAA'."""
    if text.startswith("data:") and "," in text:
        return text.split(",", 1)[1]
    return text


def _base64_bytes(text: str) -> bytes:
    """Decode standard or URL-safe base64, ignoring whitespace and missing '=' padding.
    Characters outside base64's alphabet (non-ASCII included) are a 400, not a crash."""
    compact = re.sub(r"\s+", "", text).translate(str.maketrans("-_", "+/")).rstrip("=")
    if not compact:
        raise InvalidImage(errors="the image string is empty")
    if not compact.isascii():
        raise InvalidImage(errors="not base64: the text has non-ASCII characters")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except binascii.Error as exc:
        raise InvalidImage(errors=f"not base64: {exc}") from exc


def _open_header(raw: bytes, what: str) -> Image.Image:
    """Open lazily (header only) and refuse an image over the pixel budget before decoding.
    PIL's own decompression-bomb refusal (far over any budget) is a 413 too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError as exc:
            raise LimitExceeded(what, f"a decompression bomb ({exc})", current_budget(), "--max-input-pixels",
                                status=413) from exc
        except _DECODE_ERRORS as exc:
            raise InvalidImage(errors=f"{type(exc).__name__}: {exc}") from exc
    try:
        check_image_pixels(what, *image.size)
    except LimitExceeded:
        image.close()
        raise
    return image


def _open_fully(raw: bytes, what: str = "the image") -> Image.Image:
    """Check the budget on the header, then decode all pixel data now, so truncated files
    fail here and not later."""
    image = _open_header(raw, what)
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise InvalidImage(errors=f"{type(exc).__name__}: {exc}") from exc
    return image


def _fix_orientation_and_transparency(image: Image.Image) -> Image.Image:
    """EXIF-rotate like A1111; turn transparency-keyed RGB/P images into RGBA."""
    try:
        image = ImageOps.exif_transpose(image)
    except _EXIF_READ_ERRORS:
        pass  # unreadable EXIF: keep the pixels as stored (A1111 also ignores this)
    if image.mode in ("RGB", "P") and isinstance(image.info.get("transparency"), bytes):
        image = image.convert("RGBA")
    return image


# --------------------------------------------------------------------------- reading info


def read_image_info(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """The infotext and the other info items of an image (A1111's read_info_from_image).

    PNG "parameters" text is the infotext, replaced by a non-empty EXIF UserComment when the
    image has EXIF; GIFs use their comment; NovelAI PNGs are converted to A1111's format.
    """
    # PIL types info keys as str | tuple (TIFF tags); PNG, JPEG, WebP and GIF info keys are str
    items = cast(dict[str, Any], dict(image.info or {}))
    infotext = items.pop("parameters", None)
    if "exif" in items:
        infotext = _exif_user_comment(items["exif"]) or infotext
    elif "comment" in items:
        comment = items["comment"]
        infotext = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else comment
    for key in IGNORED_INFO_KEYS:
        items.pop(key, None)
    if items.get("Software") == "NovelAI":
        infotext = _novelai_infotext(items, image.size) or infotext
    return infotext, items


def _exif_user_comment(exif_data: Any) -> str:
    """The EXIF UserComment as text, or "" when there is none or the EXIF is unreadable."""
    try:
        exif = exif_data if isinstance(exif_data, Image.Exif) else _load_exif(exif_data)
        value = exif.get_ifd(_EXIF_IFD_POINTER).get(_USER_COMMENT_TAG, b"")
    except _EXIF_READ_ERRORS:
        return ""
    return value if isinstance(value, str) else decode_user_comment(value)


def _load_exif(data: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(data)
    return exif


def decode_user_comment(value: bytes) -> str:
    """Decode by the 8-byte character-code prefix; unknown or undefined prefix: UTF-8 of it all.

    That fallback keeps the prefix bytes in the text, as A1111 does with piexif.
    """
    codec = _USER_COMMENT_CODECS.get(value[:8]) if len(value) >= 8 else None
    if codec is None:
        return value.decode("utf8", errors="ignore")
    return value[8:].decode(codec, errors="replace")


def _novelai_sampler(name: Any) -> str:
    """NovelAI writes k-diffusion function names; A1111 maps them through its sampler aliases
    (unknown ones: "Euler a")."""
    from samplers.registry import samplers_map

    return samplers_map().get(name, "Euler a") if isinstance(name, str) else "Euler a"


def _novelai_infotext(items: Mapping[str, Any], size: tuple[int, int]) -> str | None:
    """Rewrite NovelAI's Description + JSON Comment as an A1111 infotext; None if malformed."""
    try:
        meta = json.loads(items["Comment"])
        return (
            f"{items['Description']}\nNegative prompt: {meta['uc']}\n"
            f"Steps: {meta['steps']}, Sampler: {_novelai_sampler(meta['sampler'])}, "
            f"CFG scale: {meta['scale']}, Seed: {meta['seed']}, Size: {size[0]}x{size[1]}, "
            "Clip skip: 2, ENSD: 31337"
        )
    except (KeyError, TypeError, json.JSONDecodeError):
        return None


def png_info_response(
    image_b64: str,
    *,
    skip_fields: Iterable[str] = (),
    styles: Sequence[StyleLike] = (),
    infotext_styles: str = "Apply if any",
) -> dict[str, Any]:
    """The /sdapi/v1/png-info body for a base64 image.

    Like A1111, an image without infotext still gets `parse_infotext("")`: empty prompts
    plus every default, not an empty dict. Items are made JSON-safe (bytes become text).
    The keyword arguments are passed to `parse_infotext` (A1111 takes them from its options).
    """
    image = decode_image_base64(image_b64)
    infotext, items = read_image_info(image)
    info = infotext or ""
    parameters = parse_infotext(info, skip_fields, styles=styles, infotext_styles=infotext_styles)
    return {"info": info, "items": {k: _json_safe(v) for k, v in items.items()}, "parameters": parameters}


def _json_safe(value: Any) -> Any:
    """PIL info values can be bytes, tuples or rationals; JSON needs str/number/list/dict."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf8", errors="replace")
    if isinstance(value, (tuple, list)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)

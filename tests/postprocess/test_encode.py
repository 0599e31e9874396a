"""Image encoding with embedded infotext, base64 decoding and png-info, as A1111 does them."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image, PngImagePlugin

from webui_api.errors import InvalidImage, InvalidImageFormat
from webui_api.postprocess.encode import (
    decode_image_base64,
    decode_user_comment,
    encode_image,
    encode_image_base64,
    png_info_response,
    read_image_info,
    user_comment_exif,
)
from webui_api.postprocess.infotext import create_infotext

INFOTEXT = create_infotext(
    "a cat, 猫 and café",
    "blurry",
    {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": 7.0, "Seed": 1, "Size": "16x8"},
)


def _image(mode: str = "RGB") -> Image.Image:
    color = {"RGB": (200, 10, 10), "RGBA": (200, 10, 10, 128), "L": 90, "P": 3}[mode]
    return Image.new(mode, (16, 8), color)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --------------------------------------------------------------------------- PNG


def test_png_keeps_parameters_chunk_readable_by_pil_and_read_image_info():
    image = _open(encode_image(_image(), "png", infotext=INFOTEXT))
    assert image.format == "PNG"
    assert image.text["parameters"] == INFOTEXT
    infotext, items = read_image_info(image)
    assert infotext == INFOTEXT
    assert "parameters" not in items


def test_png_extra_text_and_no_infotext():
    image = _open(encode_image(_image("RGBA"), "PNG", extra_text={"postprocessing": "Postprocess upscale by: 2"}))
    assert image.mode == "RGBA"
    assert image.text == {"postprocessing": "Postprocess upscale by: 2"}
    infotext, items = read_image_info(image)
    assert infotext is None
    assert items["postprocessing"] == "Postprocess upscale by: 2"


def test_png_extra_text_cannot_repeat_parameters():
    with pytest.raises(ValueError, match="parameters"):
        encode_image(_image(), "png", infotext="x", extra_text={"parameters": "y"})


# --------------------------------------------------------------------------- JPEG / WEBP


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "webp", "JPG"])
def test_exif_user_comment_round_trip_with_non_ascii(fmt):
    image = _open(encode_image(_image("RGBA"), fmt, infotext=INFOTEXT, quality=90))
    assert image.format == ("WEBP" if fmt == "webp" else "JPEG")
    assert image.mode == "RGB"
    raw = image.getexif().get_ifd(0x8769)[0x9286]
    assert raw[:8] == b"UNICODE\x00"
    assert raw[8:].decode("utf_16_be") == INFOTEXT
    infotext, items = read_image_info(image)
    assert infotext == INFOTEXT
    assert not {"exif", "jfif", "jfif_version", "dpi", "loop", "background"} & set(items)


def test_jpeg_without_infotext_has_empty_comment_and_no_infotext():
    image = _open(encode_image(_image("P"), "jpg"))
    assert image.getexif().get_ifd(0x8769)[0x9286] == b"UNICODE\x00"
    assert read_image_info(image) == (None, {})


def test_jpeg_quality_changes_size_and_webp_lossless_is_exact():
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    assert len(encode_image(noisy, "jpg", quality=30)) < len(encode_image(noisy, "jpg", quality=95))
    exact = _open(encode_image(noisy, "webp", lossless=True))
    assert exact.tobytes() == noisy.tobytes()


def test_user_comment_exif_layout():
    block = user_comment_exif("héllo")
    assert block.startswith(b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08")
    assert block.endswith(b"UNICODE\x00" + "héllo".encode("utf_16_be"))
    exif = Image.Exif()
    exif.load(block)
    assert decode_user_comment(exif.get_ifd(0x8769)[0x9286]) == "héllo"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"ASCII\x00\x00\x00plain", "plain"),
        (b"UNICODE\x00" + "猫".encode("utf_16_be"), "猫"),
        (b"\x00" * 8 + b"undefined", "\x00" * 8 + "undefined"),  # A1111 decodes it all as UTF-8
        (b"short", "short"),
    ],
)
def test_decode_user_comment_prefixes(raw, text):
    assert decode_user_comment(raw) == text


# --------------------------------------------------------------------------- errors and base64


@pytest.mark.parametrize("fmt", ["gif", "bmp", "", "png "])
def test_unknown_format_raises(fmt):
    with pytest.raises(InvalidImageFormat) as info:
        encode_image(_image(), fmt)
    assert info.value.detail == "Invalid image format"
    assert info.value.status_code == 400


def test_base64_round_trip_without_prefix():
    text = encode_image_base64(_image(), "png", infotext=INFOTEXT)
    assert not text.startswith("data:")
    image = decode_image_base64(text)
    assert image.size == (16, 8) and image.getpixel((0, 0)) == (200, 10, 10)
    assert read_image_info(image)[0] == INFOTEXT


def test_decode_accepts_data_url_whitespace_and_missing_padding():
    text = encode_image_base64(_image(), "png")
    unpadded = text.rstrip("=")
    wrapped = "\n".join(unpadded[i : i + 60] for i in range(0, len(unpadded), 60))
    for variant in (f"data:image/png;base64,{text}", f"  {wrapped}\n", unpadded):
        assert decode_image_base64(variant).size == (16, 8)


@pytest.mark.parametrize("bad", ["", "not base64 at all!!", base64.b64encode(b"hello world").decode(), "====", "@@@@"])
def test_bad_base64_raises_invalid_image(bad):
    with pytest.raises(InvalidImage) as info:
        decode_image_base64(bad)
    assert info.value.detail == "Invalid encoded image"


def test_truncated_image_raises_invalid_image():
    data = encode_image(Image.effect_noise((64, 64), 80).convert("RGB"), "png")
    with pytest.raises(InvalidImage):
        decode_image_base64(base64.b64encode(data[: len(data) // 2]).decode())


def test_non_string_raises_invalid_image():
    with pytest.raises(InvalidImage, match="Invalid encoded image"):
        decode_image_base64(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["http://example.com/cat.png", "https://example.com/cat.png"])
def test_urls_are_refused(url):
    with pytest.raises(InvalidImage) as info:
        decode_image_base64(url)
    assert info.value.detail == "Requests not allowed"


def test_decode_turns_transparent_palette_into_rgba():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=b"\x40\x80")  # two alpha entries: PIL reads bytes
    decoded = decode_image_base64(base64.b64encode(buffer.getvalue()).decode())
    assert decoded.mode == "RGBA"
    assert decoded.getpixel((0, 0))[3] == 0x40


def test_decode_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8)).save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_image_base64(base64.b64encode(buffer.getvalue()).decode()).size == (8, 16)


# --------------------------------------------------------------------------- png-info


def test_png_info_response_on_encoded_png():
    body = png_info_response(encode_image_base64(_image(), "png", infotext=INFOTEXT))
    assert body["info"] == INFOTEXT
    assert body["items"] == {}
    params = body["parameters"]
    assert params["Prompt"] == "a cat, 猫 and café"
    assert params["Negative prompt"] == "blurry"
    assert (params["Steps"], params["Seed"], params["CFG scale"]) == ("20", "1", "7.0")
    assert (params["Size-1"], params["Size-2"]) == ("16", "8")
    assert params["Clip skip"] == "1" and params["RNG"] == "GPU"


def test_png_info_response_on_encoded_webp():
    body = png_info_response(encode_image_base64(_image(), "webp", infotext=INFOTEXT))
    assert body["info"] == INFOTEXT
    assert body["parameters"]["Sampler"] == "Euler a"


def test_png_info_without_infotext_still_parses_defaults_like_a1111():
    info = PngImagePlugin.PngInfo()
    info.add_text("postprocessing", "Postprocess upscale by: 2")
    buffer = io.BytesIO()
    _image().save(buffer, format="PNG", pnginfo=info, dpi=(72, 72))
    body = png_info_response(base64.b64encode(buffer.getvalue()).decode())
    assert body["info"] == ""
    assert body["items"] == {"postprocessing": "Postprocess upscale by: 2"}
    assert body["parameters"]["Prompt"] == "" and body["parameters"]["Negative prompt"] == ""
    assert body["parameters"]["Masked area padding"] == 32


def test_novelai_png_is_converted():
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "NovelAI")
    info.add_text("Description", "1girl, solo")
    info.add_text("Comment", '{"uc": "lowres", "steps": 28, "sampler": "k_euler_ancestral", "scale": 11, "seed": 7}')
    buffer = io.BytesIO()
    _image().save(buffer, format="PNG", pnginfo=info)
    body = png_info_response(base64.b64encode(buffer.getvalue()).decode())
    assert body["info"] == (
        "1girl, solo\nNegative prompt: lowres\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 11, Seed: 7, Size: 16x8, Clip skip: 2, ENSD: 31337"
    )
    assert body["parameters"]["Sampler"] == "Euler a"


def test_png_info_passes_parse_options():
    body = png_info_response(
        encode_image_base64(_image(), "png", infotext=INFOTEXT), skip_fields=["Seed"], infotext_styles="Ignore"
    )
    assert "Seed" not in body["parameters"] and body["parameters"]["Steps"] == "20"


# --------------------------------------------------------------------------- compression level


def test_png_compress_level_changes_size_not_pixels():
    import numpy as np

    from webui_api.postprocess.encode import DEFAULT_PNG_COMPRESS_LEVEL, encode_image

    image = Image.fromarray((np.arange(64 * 64 * 3) % 7 * 30).astype("uint8").reshape(64, 64, 3), "RGB")
    stored, small = encode_image(image, "png", png_compress_level=0), encode_image(image, "png", png_compress_level=9)
    assert len(stored) > len(small)
    assert DEFAULT_PNG_COMPRESS_LEVEL == 1
    for data in (stored, small):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(image))


@pytest.mark.parametrize("level", [-1, 10, 2.5, True, "3"])
def test_png_compress_level_is_validated(level):
    from webui_api.postprocess.encode import encode_image

    with pytest.raises(ValueError, match="png_compress_level"):
        encode_image(Image.new("RGB", (4, 4)), "png", png_compress_level=level)


def test_encoding_options_from_server_options():
    from webui_api.errors import BadRequest
    from webui_api.postprocess.encode import encoding_options

    assert encoding_options({}) == {"quality": 80, "lossless": False, "png_compress_level": 1}
    assert encoding_options({"jpeg_quality": 95.0, "webp_lossless": True, "png_compress_level": 6.0}) == {
        "quality": 95, "lossless": True, "png_compress_level": 6}
    with pytest.raises(BadRequest, match="png_compress_level"):
        encoding_options({"png_compress_level": "fast"})

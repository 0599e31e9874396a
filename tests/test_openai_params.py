"""OpenAI images parameters -> A1111 fields, and OpenAI masks -> A1111 masks (no server)."""

from __future__ import annotations

import pytest
from PIL import Image

from webui_api.errors import BadRequest, UnknownCheckpoint
from webui_api.openai_images.errors import OpenAIParamError, api_error_body, error_body, validation_error_body
from webui_api.openai_images.params import (
    GenerationBody,
    native_size,
    parse_size,
    snap_to_multiple_of_8,
    txt2img_fields,
)
from webui_api.openai_images.uploads import edit_mask, transparent_area


def test_parse_size():
    assert parse_size("1024x768", (512, 512)) == (1024, 768)
    assert parse_size(None, (512, 512)) == (512, 512) and parse_size("auto", (768, 768)) == (768, 768)
    for bad in ("1000x1001", "x", "512", "-8x8", "8x8"):
        with pytest.raises(OpenAIParamError):
            parse_size(bad, (512, 512))


def test_native_size_by_family():
    assert native_size("sdxl") == (1024, 1024) and native_size("sd2", "sd2-v") == (768, 768)
    assert native_size("sd1") == (512, 512) and native_size(None) == (512, 512)
    assert snap_to_multiple_of_8(70, 20) == (64, 64) and snap_to_multiple_of_8(1023, 777) == (1016, 776)


def test_txt2img_fields_mapping():
    body = GenerationBody(prompt="p", n=3, quality="hd", style="natural", output_format="webp", output_compression=20)
    fields = txt2img_fields(body, (640, 512), "model.safetensors [abc]")
    assert fields["batch_size"] == 3 and fields["steps"] == 30 and fields["cfg_scale"] == 5.0
    assert (fields["width"], fields["height"]) == (640, 512)
    assert fields["override_settings"] == {"samples_format": "webp", "jpeg_quality": 80,
                                           "sd_model_checkpoint": "model.safetensors [abc]"}
    explicit = txt2img_fields(GenerationBody(prompt="p", quality="hd", steps=5, cfg_scale=2), (64, 64), None)
    assert explicit["steps"] == 5 and explicit["cfg_scale"] == 2
    assert "sd_model_checkpoint" not in explicit["override_settings"]


def test_transparent_pixels_become_white_in_the_a1111_mask():
    image = Image.new("RGBA", (8, 8), (1, 2, 3, 255))
    image.putpixel((2, 3), (0, 0, 0, 0))
    image.putpixel((4, 4), (0, 0, 0, 128))  # half transparent: kept, as in OpenAI's rule
    mask = transparent_area(image)
    assert mask.getpixel((2, 3)) == 255 and mask.getpixel((4, 4)) == 0 and mask.getpixel((0, 0)) == 0
    assert transparent_area(Image.new("RGBA", (8, 8), (0, 0, 0, 255))) is None
    assert transparent_area(Image.new("RGB", (8, 8))) is None


def test_mask_without_alpha_is_read_as_a1111_white_means_repaint():
    image = Image.new("RGB", (8, 8))
    mask = Image.new("L", (8, 8), 0)
    mask.putpixel((1, 1), 255)
    assert edit_mask(image, mask).getpixel((1, 1)) == 255
    assert edit_mask(image, None) is None
    with pytest.raises(OpenAIParamError):
        edit_mask(image, Image.new("L", (4, 4)))


def test_error_bodies_follow_openai_types_and_codes():
    assert error_body(401, "no")["error"] == {"message": "no", "type": "invalid_request_error", "param": None,
                                              "code": "invalid_api_key"}
    assert error_body(429, "slow")["error"]["type"] == "requests"
    assert error_body(503, "busy")["error"]["type"] == "server_error"
    missing = api_error_body(UnknownCheckpoint("sdxl"))["error"]
    assert missing["code"] == "model_not_found" and missing["param"] == "model" and "'sdxl'" in missing["message"]
    bad = api_error_body(BadRequest("Invalid encoded image", errors="not base64"))["error"]
    assert bad["message"] == "Invalid encoded image: not base64" and bad["type"] == "invalid_request_error"
    field = validation_error_body([{"loc": ("body", "n"), "msg": "too big", "type": "less_than_equal"}])["error"]
    assert field["param"] == "n" and field["message"] == "n: too big"

"""Units as clients send them: legacy names, int and string enums, image forms, drops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui_api.controlnet import units as cu
from webui_api.errors import ApiError, InvalidImage, ValidationFailed

from .helpers import b64_png, pattern_image

IMAGE = b64_png(pattern_image(16, 8))


def parse(*unit_dicts, key="ControlNet"):
    return cu.parse_units({key: {"args": list(unit_dicts)}})


def test_key_is_case_insensitive_and_missing_enabled_means_enabled():
    for key in ("ControlNet", "controlnet", "CONTROLNET"):
        (unit,) = parse({"image": IMAGE, "model": "m"}, key=key)
        assert unit.module == "none" and unit.model == "m" and unit.weight == 1.0
        assert unit.image.shape == (8, 16, 3) and unit.image.dtype == np.uint8


def test_empty_args_disabled_and_zero_weight_units_are_dropped():
    assert parse() == ()
    assert cu.parse_units({"controlnet": {"args": [False]}}) == ()
    assert cu.parse_units({}) == ()
    units = parse({"image": IMAGE, "enabled": False}, {"image": IMAGE, "weight": 0}, {"image": IMAGE, "weight": 0.5})
    assert [u.weight for u in units] == [0.5] and units[0].index == 2


def test_legacy_field_names():
    (unit,) = parse({"input_image": IMAGE, "guidance": 0.4, "lowvram": True, "model": "x"})
    assert unit.image is not None and unit.guidance_end == 0.4 and unit.low_vram is True


def test_both_spellings_of_one_field_is_a_422():
    with pytest.raises(ValidationFailed, match="both 'input_image' and 'image'"):
        parse({"input_image": IMAGE, "image": IMAGE})


@pytest.mark.parametrize(
    ("sent", "expected"),
    [(0, "Just Resize"), (1, "Crop and Resize"), (2, "Resize and Fill"), ("Resize and Fill", "Resize and Fill"),
     ("just resize", "Just Resize"), ("Envelope (Outer Fit)", "Resize and Fill"),
     ("Scale to Fit (Inner Fit)", "Crop and Resize"), ("Inner Fit (Scale to Fit)", "Crop and Resize")],
)
def test_resize_mode_ints_strings_and_old_names(sent, expected):
    (unit,) = parse({"image": IMAGE, "resize_mode": sent})
    assert unit.resize_mode == expected


@pytest.mark.parametrize(
    ("sent", "expected", "soft", "cond_only"),
    [
        (0, "Balanced", False, False),
        (1, "My prompt is more important", True, False),
        (2, "ControlNet is more important", True, True),
        ("ControlNet is more important", "ControlNet is more important", True, True),
        ("balanced", "Balanced", False, False),
    ],
)
def test_control_mode_ints_and_strings(sent, expected, soft, cond_only):
    (unit,) = parse({"image": IMAGE, "control_mode": sent})
    assert (unit.control_mode, unit.soft_injection, unit.cond_only) == (expected, soft, cond_only)


@pytest.mark.parametrize("field_name", ["resize_mode", "control_mode", "hr_option"])
def test_unknown_enum_value_is_a_422_listing_choices(field_name):
    with pytest.raises(ValidationFailed, match=field_name):
        parse({"image": IMAGE, field_name: "Sideways"})


def test_image_forms_data_url_dict_and_pair():
    data_url = b64_png(pattern_image(16, 8), data_url=True)
    mask = b64_png(Image.new("RGB", (16, 8), "black"))
    for image in (data_url, {"image": IMAGE, "mask": mask}, [IMAGE, mask], [{"image": IMAGE}]):
        (unit,) = parse({"image": image})
        assert unit.image.shape == (8, 16, 3)
        assert np.array_equal(unit.image, np.asarray(pattern_image(16, 8)))


def test_drawn_mask_becomes_the_input_like_the_extensions_canvas_scribble():
    drawn = Image.new("RGB", (16, 8), "black")
    drawn.paste((255, 255, 255), (0, 0, 8, 8))
    (unit,) = parse({"image": IMAGE, "mask_image": b64_png(drawn)})
    assert unit.image[0, 0].tolist() == [255, 255, 255] and unit.image[0, 15].tolist() == [0, 0, 0]


def test_mask_of_another_size_and_bad_base64_are_4xx():
    with pytest.raises(ApiError) as err:
        parse({"image": IMAGE, "mask": b64_png(Image.new("RGB", (4, 4)))})
    assert 400 <= err.value.status_code < 500
    with pytest.raises(InvalidImage) as bad:
        parse({"image": "not an image!!"})
    assert "unit 0" in bad.value.errors


def test_guidance_and_weight_ranges_are_checked():
    with pytest.raises(ValidationFailed, match="guidance_start"):
        parse({"image": IMAGE, "guidance_start": 0.8, "guidance_end": 0.2})
    with pytest.raises(ValidationFailed, match="weight"):
        parse({"image": IMAGE, "weight": 3})


def test_unknown_module_is_a_422_and_aliases_resolve():
    with pytest.raises(ValidationFailed, match="not available"):
        parse({"image": IMAGE, "module": "no_such_preprocessor"})
    (unit,) = parse({"image": IMAGE, "module": "None"})
    assert unit.module == "none"


def test_img2img_init_image_stands_in_with_a1111_resize_mode():
    init = np.zeros((4, 4, 3), np.uint8)
    (unit,) = cu.parse_units({"controlnet": {"args": [{"model": "m"}]}}, init_image=lambda: init, init_resize_mode=2)
    assert unit.image is init and unit.resize_mode == "Resize and Fill"
    (own,) = cu.parse_units({"controlnet": {"args": [{"image": IMAGE}]}}, init_image=lambda: init, init_resize_mode=2)
    assert own.image.shape == (8, 16, 3) and own.resize_mode == "Crop and Resize"


def test_job_builder_fills_units_and_accepts_the_script():
    from webui_api.job_builder import build_txt2img, check_scripts
    from webui_api.schemas.generation import Txt2ImgRequest

    request = Txt2ImgRequest(prompt="x", steps=2, width=64, height=64,
                             alwayson_scripts={"ControlNet": {"args": [{"image": IMAGE, "model": "tiny_canny"}]}})
    job = build_txt2img(request, {})
    assert len(job.controlnet_units) == 1 and job.controlnet_units[0].model == "tiny_canny"
    with pytest.raises(ValidationFailed, match="always on script nope not found"):
        check_scripts(Txt2ImgRequest(prompt="x", alwayson_scripts={"nope": {"args": [1]}}))
    check_scripts(Txt2ImgRequest(prompt="x", alwayson_scripts={"nope": {"args": []}}))  # disabled entry: a no-op

"""X/Y/Z plot axes: A1111's per-tab index order, range and CSV syntax, value checks."""

from __future__ import annotations

import pytest

from webui_api.builtin_scripts.base import ScriptContext
from webui_api.builtin_scripts.xyz_axes import (
    axes_for,
    axis_values,
    expand_float,
    expand_int,
    find_axis,
    format_value,
    split_csv,
    to_csv,
)
from webui_api.errors import ValidationFailed

CTX = ScriptContext(tab="txt2img", options={}, styles=(), sampler_names=("Euler a", "Euler", "DPM++ 2M"))


def test_axis_indexes_match_a1111_per_tab():
    txt2img = [axis.label for axis in axes_for("txt2img")]
    img2img = [axis.label for axis in axes_for("img2img")]
    assert len(txt2img) == 42 and len(img2img) == 41
    assert txt2img[:12] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
                            "Prompt S/R", "Prompt order", "Sampler", "Hires sampler", "Checkpoint name"]
    assert img2img[:11] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale",
                            "Prompt S/R", "Prompt order", "Sampler", "Checkpoint name"]
    assert txt2img[-1] == img2img[-1] == "Size"
    assert "Denoising" in txt2img and "Hires upscaler" not in img2img


def test_find_axis_by_index_or_label():
    assert find_axis("txt2img", 4, "X").label == "Steps"
    assert find_axis("img2img", 5, "X").label == "CFG Scale"
    assert find_axis("txt2img", "cfg scale", "Y").label == "CFG Scale"


@pytest.mark.parametrize(
    "choice, message", [(99, "out of range"), ("Colour", "unknown X type"), ("FP8 mode", "not supported")]
)
def test_bad_axis_types_are_422(choice, message):
    with pytest.raises(ValidationFailed, match=message):
        find_axis("txt2img", choice, "X")


def test_int_ranges():
    assert expand_int("1-5") == [1, 2, 3, 4, 5]
    assert expand_int("1-10 (+3)") == [1, 4, 7, 10]
    assert expand_int("10-1 (-4)") == [10, 6]  # A1111 adds 1 to the end whatever the step: 2 is excluded
    assert expand_int("1-10 [4]") == [1, 4, 7, 10]
    assert expand_int("-1") == ["-1"]


def test_float_ranges():
    assert expand_float("0.5-1 (+0.25)") == [0.5, 0.75, 1.0]
    assert expand_float("1-2 [3]") == [1.0, 1.5, 2.0]
    assert expand_float("7.5") == ["7.5"]


def test_huge_or_stepless_ranges_are_refused_before_expanding():
    with pytest.raises(ValidationFailed, match="at most"):
        expand_int("1-100000000")
    with pytest.raises(ValidationFailed, match="step of 0"):
        expand_float("1-2 (+0)")


def test_csv_quoting():
    assert split_csv('a, "b, c",  d') == ["a", "b, c", "d"]
    assert to_csv(["Euler a", "DPM++ 2M, x"]) == 'Euler a,"DPM++ 2M, x"'


def test_axis_values_convert_and_check():
    steps = find_axis("txt2img", "Steps", "X")
    assert axis_values(steps, "1-3, 10", (), False, CTX) == [1, 2, 3, 10]
    with pytest.raises(ValidationFailed, match="'abc' is not a valid int for the axis 'Steps'"):
        axis_values(steps, "1, abc", (), False, CTX)


def test_choice_axes_read_the_dropdown_unless_csv_mode():
    sampler = find_axis("txt2img", "Sampler", "X")
    assert axis_values(sampler, "Euler", ["Euler a", "DPM++ 2M"], False, CTX) == ["Euler a", "DPM++ 2M"]
    assert axis_values(sampler, "Euler", ["Euler a"], True, CTX) == ["Euler"]
    assert axis_values(sampler, "Euler, DPM++ 2M", [], False, CTX) == ["Euler", "DPM++ 2M"]  # empty dropdown: the text


def test_legend_formats():
    assert format_value(find_axis("txt2img", "CFG Scale", "X"), 7.123456789) == "CFG Scale: 7.12345679"
    assert format_value(find_axis("txt2img", "Sampler", "X"), "Euler") == "Euler"
    assert format_value(find_axis("txt2img", "Prompt order", "X"), ("a", "b")) == "a, b"
    assert format_value(find_axis("txt2img", "Nothing", "X"), 0) == ""

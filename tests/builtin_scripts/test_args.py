"""Positional script_args: defaults for missing slots, readers that refuse nonsense with a 422."""

from __future__ import annotations

import pytest

from webui_api.builtin_scripts.args import ArgSpec, bind, one_of, read_bool, read_float, read_int, read_int_or_str
from webui_api.errors import ValidationFailed

SPECS = [
    ArgSpec("Flag", False, read_bool),
    ArgSpec("Count", 64, read_int, minimum=0, maximum=256, step=16),
    ArgSpec("Where", "start", one_of(("start", "end")), choices=("start", "end")),
    ArgSpec("Scale", 2.0, read_float),
]


def test_missing_and_null_slots_take_the_defaults():
    assert bind("s", SPECS, []) == [False, 64, "start", 2.0]
    assert bind("s", SPECS, [True, None]) == [True, 64, "start", 2.0]


def test_values_are_read_and_extra_values_ignored():
    assert bind("s", SPECS, ["true", "16", "end", "1.5", "ignored"]) == [True, 16, "end", 1.5]
    assert bind("s", SPECS, [1, 8.0, "start", 3]) == [True, 8, "start", 3.0]


@pytest.mark.parametrize("values, slot", [
    (["maybe"], "Flag"), ([False, "abc"], "Count"), ([False, 1.5], "Count"), ([False, True], "Count"),
    ([False, 1, "middle"], "Where"), ([False, 1, "end", "nan"], "Scale"), ([False, 1, "end", [2]], "Scale"),
])
def test_bad_values_are_422_naming_script_slot_and_value(values, slot):
    with pytest.raises(ValidationFailed) as caught:
        bind("my script", SPECS, values)
    assert caught.value.status_code == 422
    assert "my script" in str(caught.value.detail) and slot in str(caught.value.detail)


def test_index_or_name_slots_keep_names_and_read_indexes():
    assert read_int_or_str("Lanczos") == "Lanczos"
    assert read_int_or_str("2") == 2 and read_int_or_str(3) == 3


def test_api_item_has_a1111_script_arg_keys():
    assert SPECS[1].api_item() == {
        "label": "Count",
        "value": 64,
        "minimum": 0,
        "maximum": 256,
        "step": 16,
        "choices": None,
    }
    assert SPECS[2].api_item()["choices"] == ["start", "end"]

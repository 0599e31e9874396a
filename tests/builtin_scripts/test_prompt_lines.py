"""Prompts from file: reading plain prompt lines and A1111's `--key value` argument lines."""

from __future__ import annotations

import pytest

from webui_api.builtin_scripts.prompts_from_file import parse_line, read_lines


def test_plain_lines_are_prompts_and_blank_lines_skipped():
    assert read_lines("a cat\n\n   \n  a dog  \n") == [{"prompt": "a cat"}, {"prompt": "a dog"}]


def test_argument_lines_are_typed():
    line = '--prompt "a red fox" --negative_prompt blurry dark --steps 10 --cfg_scale 4.5 --seed 7 --tiling true'
    assert parse_line(line) == {
        "prompt": "a red fox",
        "negative_prompt": "blurry dark",
        "steps": 10,
        "cfg_scale": 4.5,
        "seed": 7,
        "tiling": True,
    }


def test_prompt_takes_every_word_up_to_the_next_option():
    assert parse_line("--prompt a small house --width 128") == {"prompt": "a small house", "width": 128}


def test_a_double_dash_inside_a_prompt_falls_back_to_the_whole_line():
    assert parse_line("a cat -- sitting") == {"prompt": "a cat -- sitting"}


@pytest.mark.parametrize("line", ["--steps ten", "--bogus 3", "--steps", '--prompt "unclosed', "--steps 3 loose"])
def test_broken_argument_lines_become_the_prompt_like_a1111(line):
    assert parse_line(line) == {"prompt": line}

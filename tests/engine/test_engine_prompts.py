"""A1111's prompt language: AND weights, prompt-editing / alternation schedules, emphasis.

The expected values are outputs of A1111 v1.10's own parser (lark 1.1.2) recorded in the
reference notes, so they pin A1111's quirks (off-by-ones, "1.0" being a fraction, stray
brackets kept as text), not what a tidy parser would do.
"""

from __future__ import annotations

import random

import pytest

from webui_api.engine.prompts import (
    MAX_BRACKET_DEPTH,
    PromptSyntaxError,
    ScheduledText,
    StepFrame,
    SubPrompt,
    WeightedFragment,
    fragments_for_emphasis,
    parse_attention,
    prompt_schedule,
    schedules_differ_with_old_timelines,
    split_subprompts,
)


def schedule(prompt, steps=20, hires_steps=None, old=False):
    return [[s.end_at_step, s.text] for s in prompt_schedule(prompt, steps, hires_steps, old)]


def alternating(options, steps):
    return [[t, options[(t - 1) % len(options)]] for t in range(1, steps + 1)]


# --------------------------------------------------------------------------- schedules

SCHEDULES_20 = [
    ("a cat", [[20, "a cat"]]),
    ("", [[20, ""]]),
    ("a [dog:cat:10] in a hat", [[10, "a dog in a hat"], [20, "a cat in a hat"]]),
    ("a [dog:cat:0.5]", [[10, "a dog"], [20, "a cat"]]),
    ("a [dog:cat:0.25] [red:blue:0.75]", [[5, "a dog red"], [15, "a cat red"], [20, "a cat blue"]]),
    ("[dog:cat:1]", [[1, "dog"], [20, "cat"]]),
    ("[dog:cat:1.0]", [[20, "dog"]]),  # "1.0" is a fraction: step 20, never switches
    ("[dog:cat:0]", [[20, "cat"]]),
    ("[dog:cat:25]", [[20, "dog"]]),
    ("a [b:c:-3]", [[20, "a c"]]),
    ("[a:b:0.999]", [[19, "a"], [20, "b"]]),
    ("[a:b:0.33]", [[6, "a"], [20, "b"]]),
    ("a [hat:5] b", [[5, "a  b"], [20, "a hat b"]]),
    ("a [hat::5] b", [[5, "a hat b"], [20, "a  b"]]),
    ("a[b:[c:d:15]:5]e", [[5, "abe"], [15, "ace"], [20, "ade"]]),
    ("a [b: 0.3 ] c", [[6, "a  c"], [20, "a b c"]]),
    ("(a [b:c:5]:1.2)", [[5, "(a b:1.2)"], [20, "(a c:1.2)"]]),
    ("[(cat:1.3):dog:0.4]", [[8, "(cat:1.3)"], [20, "dog"]]),
    ("a [unbalanced", [[20, "a [unbalanced"]]),
    ("a \\[b:c:5\\]", [[20, "a \\[b:c:5\\]"]]),
    ("[a:b:1e1]", [[10, "a"], [20, "b"]]),  # an exponent without "." counts steps
    ("[a:b:1.5e-1]", [[3, "a"], [20, "b"]]),  # with "." it is a fraction: 0.15 * 20
    ("[a:b:+4]", [[4, "a"], [20, "b"]]),
    ("[a:b:2.]", [[20, "a"]]),  # "2." is a fraction: 40 steps, capped at 20
    ("[a:b:1e999]", [[20, "a"]]),  # A1111: OverflowError; here: never switches
    ("[a:b:-1e999]", [[20, "b"]]),
]


@pytest.mark.parametrize("prompt, expected", SCHEDULES_20)
def test_schedule_at_20_steps(prompt, expected):
    assert schedule(prompt) == expected


# A1111's doctests run at 10 steps.
SCHEDULES_10 = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("a [{b|d{:.5] c", [[10, "a [{b|d{:.5] c"]]),  # the grammar rejects it (A1111's doctest is stale)
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
]


@pytest.mark.parametrize("prompt, expected", SCHEDULES_10)
def test_schedule_at_10_steps(prompt, expected):
    assert schedule(prompt, 10) == expected


@pytest.mark.parametrize(
    "prompt, options",
    [
        ("[cat|dog]", ["cat", "dog"]),
        ("[cat|dog|bird] photo", ["cat photo", "dog photo", "bird photo"]),
        ("[fe|]male", ["female", "male"]),
        ("[fe|||]male", ["female", "male", "male", "male"]),
        ("[a|(b:1.1)]", ["a", "(b:1.1)"]),
    ],
)
def test_alternation_changes_every_step(prompt, options):
    assert schedule(prompt) == alternating(options, 20)


def test_alternation_and_editing_combine():
    got = schedule("[a|b] [x:y:3]", 4)
    assert got == [[1, "a x"], [2, "b x"], [3, "a x"], [4, "b y"]]


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a [b:.5] c", [[10, "a b c"]]),  # fraction .5 of the whole is still the first pass
        ("a [b:1.5] c", [[5, "a  c"], [10, "a b c"]]),  # half-way through the hires pass
        ("a [b:15] c", [[5, "a  c"], [10, "a b c"]]),  # integers count from the first pass's start
        ("a [b:5] c", [[10, "a b c"]]),
    ],
)
def test_hires_pass_offsets(prompt, expected):
    assert schedule(prompt, 10, hires_steps=10) == expected


def test_old_timelines():
    assert schedule("[dog:cat:1.0]", old=True) == [[1, "dog"], [20, "cat"]]
    assert schedule("[dog:cat:0.5]", old=True) == [[10, "dog"], [20, "cat"]]
    # old mode ignores the hires frame: the first pass's 10 steps, no offsets
    assert schedule("a [b:1.5] c", 10, hires_steps=6, old=True) == [[1, "a  c"], [10, "a b c"]]


def test_old_timelines_flag_only_when_they_differ():
    assert schedules_differ_with_old_timelines("[dog:cat:1.0]", 20)
    assert not schedules_differ_with_old_timelines("[dog:cat:10]", 20)
    assert not schedules_differ_with_old_timelines("no editing", 20)


def test_step_frame_validates():
    with pytest.raises(ValueError):
        StepFrame.for_pass(0)
    assert StepFrame.for_pass(10, 5) == StepFrame(steps=5, int_offset=10, fraction_offset=1.0)


def test_schedule_entries_are_dataclasses():
    assert prompt_schedule("[a:b:2]", 4) == (ScheduledText(2, "a"), ScheduledText(4, "b"))


# --------------------------------------------------------------------------- AND

AND_CASES = [
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a cat :1.5 AND a dog:0.5", [("a cat", 1.5), (" a dog", 0.5)]),
    ("a cat AND a dog :-1", [("a cat", 1.0), (" a dog", -1.0)]),
    ("a cat ANDa dog", [("a cat ANDa dog", 1.0)]),
    ("cat AND cat AND dog:2", [("cat", 1.0), (" cat", 1.0), (" dog", 2.0)]),
    ("red:1.2", [("red", 1.2)]),
    ("a (cat:1.2) AND b:0.8", [("a (cat:1.2)", 1.0), (" b", 0.8)]),
    ("a:1.", [("a", 1.0)]),
    ("a:.5", [("a", 0.5)]),
    ("a: 1e3", [("a: 1e3", 1.0)]),  # no exponent form
    ("a and b", [("a and b", 1.0)]),  # case-sensitive
    ("  lead AND trail  ", [("  lead", 1.0), (" trail", 1.0)]),
    ("", [("", 1.0)]),
    ("x\nAND\ny:3", [("x", 1.0), ("\ny", 3.0)]),
]


@pytest.mark.parametrize("prompt, expected", AND_CASES)
def test_and_split(prompt, expected):
    assert split_subprompts(prompt) == tuple(SubPrompt(t, w) for t, w in expected)


# --------------------------------------------------------------------------- emphasis

ATTENTION_CASES = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("((very important))", [["very important", 1.2100000000000002]]),
    ("(((x)))", [["x", 1.3310000000000004]]),
    ("(x:1.3)", [["x", 1.3]]),
    ("((x:1.3))", [["x", 1.4300000000000002]]),
    ("[x]", [["x", 0.9090909090909091]]),
    ("[[x]]", [["x", 0.8264462809917354]]),
    ("(x:0.5)", [["x", 0.5]]),
    ("(x:-1)", [["x", -1.0]]),
    ("(x: 1.5 )", [["x", 1.5]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("[unbalanced", [["unbalanced", 0.9090909090909091]]),
    ("\\(literal\\)", [["(literal)", 1.0]]),
    ("\\[x\\]", [["[x]", 1.0]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("a \\ b", [["a  b", 1.0]]),  # a lone backslash vanishes
    ("x:1.5", [["x:1.5", 1.0]]),
    ("(a:b)", [["a:b", 1.1]]),
    ("[x:1.5]", [["x:1.5", 0.9090909090909091]]),
    ("(a)(b)", [["ab", 1.1]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (b [c] d) e", [["a ", 1.0], ["b ", 1.1], ["c", 1.0], [" d", 1.1], [" e", 1.0]]),
    ("((a), b)", [["a", 1.2100000000000002], [", b", 1.1]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1.0], ["b", 1.0]]),
    ("aBREAKb", [["aBREAKb", 1.0]]),
    ("a (b BREAK c) d", [["a ", 1.0], ["b", 1.1], ["BREAK", -1.1], ["c", 1.1], [" d", 1.0]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.5730000000000004],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641000000000006],
            [".", 1.1],
        ],
    ),
    ("", [["", 1.0]]),
    ("()", [["", 1.0]]),
    ("[]", [["", 1.0]]),
    ("x)", [["x)", 1.0]]),  # a closer with nothing open is text
    ("x]:", [["x]:", 1.0]]),
]


@pytest.mark.parametrize("text, expected", ATTENTION_CASES)
def test_attention(text, expected):
    assert [[f.text, f.weight] for f in parse_attention(text)] == expected


def test_break_marker_only_at_top_level():
    top = parse_attention("a BREAK b")[1]
    nested = parse_attention("(a BREAK b)")[1]
    assert top.is_break and top == WeightedFragment("BREAK", -1.0)
    assert nested.text == "BREAK" and not nested.is_break


def test_emphasis_none_keeps_text_literal():
    assert fragments_for_emphasis("(a BREAK b:1.2)", "None") == [WeightedFragment("(a BREAK b:1.2)", 1.0)]
    assert fragments_for_emphasis("(a)", "Ignore") == [WeightedFragment("a", 1.1)]


@pytest.mark.parametrize(
    "text, position, number",
    [("(x:1.1.1)", 3, "1.1.1"), ("a (b:.)", 5, "."), ("((x:1.2) y:-.)", 11, "-.")],
)
def test_bad_emphasis_weight_is_a_400_with_position(text, position, number):
    with pytest.raises(PromptSyntaxError) as caught:
        parse_attention(text)
    assert caught.value.status_code == 400
    assert f"{number!r} at character {position}" in caught.value.detail


def test_bad_weight_without_open_bracket_is_text():
    assert parse_attention("x:1.1.1)") == [WeightedFragment("x:1.1.1)", 1.0)]


# --------------------------------------------------------------------------- malformed input never crashes


def test_deep_square_nesting_is_a_400():
    prompt = "[" * (MAX_BRACKET_DEPTH + 1) + "x" + "]" * (MAX_BRACKET_DEPTH + 1)
    with pytest.raises(PromptSyntaxError) as caught:
        prompt_schedule(prompt, 20)
    assert f"{MAX_BRACKET_DEPTH + 1} levels deep" in caught.value.detail


def test_prompts_without_square_brackets_skip_the_parser():
    deep = "(" * 300 + "x" + ")" * 300  # A1111's parser overflows its recursion here
    assert schedule(deep) == [[20, deep]]
    nested = "[" * 30 + "x:2" + "]" * 30
    assert schedule(nested, 4) == [[2, "[" * 29 + "]" * 29], [4, "[" * 29 + "x" + "]" * 29]]


def test_escaped_brackets_do_not_count_as_nesting():
    prompt = "\\(" * (MAX_BRACKET_DEPTH + 5)
    assert schedule(prompt) == [[20, prompt]]


def test_random_garbage_never_raises_anything_but_a_400():
    pieces = ["a", " ", "(", ")", "[", "]", ":", "|", "\\", "1", ".", "AND", "BREAK", "1.1.1", "e9", "-"]
    rng = random.Random(4)
    for _ in range(120):
        prompt = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        for sub in split_subprompts(prompt):
            for entry in prompt_schedule(sub.text, 7, None, False):
                try:
                    parse_attention(entry.text)
                except PromptSyntaxError:
                    pass


# --------------------------------------------------------------------------- corpus digest vs A1111's parser

# Digests of A1111 v1.10's parser (lark 1.1.2) over tests/engine/prompt_corpus.py, leaving out the
# prompts whose parse A1111 itself changes with Python's hash seed (pathological mixes of stray
# brackets and editing syntax: lark 1.1.2's Earley parser breaks ties between parses in set order).
AMBIGUOUS_IN_A1111 = [3, 6, 7, 9, 11, 13, 22, 28, 78, 88, 95, 97, 98, 106, 116, 119, 166, 178, 184, 190]
A1111_DIGEST_40 = "eaddc5e7521695f50495b4cd91fef43cf106bf555ecd4df58cca93f314fa94f2"
A1111_DIGEST_200 = "7c872dc39c3dbed758c79d9a30f6f701384c2a4047f140d296218506770ebe41"


def _our_digest(count: int) -> str:
    from tests.engine import prompt_corpus

    prompts = [p for i, p in enumerate(prompt_corpus.corpus(count=count)) if i not in AMBIGUOUS_IN_A1111]
    return prompt_corpus.digest(
        prompts,
        lambda p: [(s.text, s.weight) for s in split_subprompts(p)],
        lambda p, steps, hires, old: [(e.end_at_step, e.text) for e in prompt_schedule(p, steps, hires, old)],
        lambda t: [(f.text, f.weight) for f in parse_attention(t)],
    )


def test_corpus_matches_a1111_parser():
    assert _our_digest(40) == A1111_DIGEST_40


@pytest.mark.slow
def test_large_corpus_matches_a1111_parser():
    assert _our_digest(200) == A1111_DIGEST_200

"""A1111's prompt language: AND sub-prompts, prompt editing / alternation schedules, emphasis.

Three independent passes, applied in A1111's order to one prompt:

1. `split_subprompts`: composable diffusion. The prompt is cut at every whole-word `AND`; a
   trailing `:number` on a sub-prompt is its weight (negative prompts are never split).
2. `prompt_schedule`: prompt editing `[a:b:when]`, `[b:when]`, `[a::when]` and alternation
   `[a|b]` become a list of (end_at_step, text) variants for a given step count. The grammar
   is parsed with lark's Earley parser (A1111 does the same); its ambiguity resolution decides
   odd corners, so the grammar below keeps the structure and alternative order of A1111's.
   A prompt the grammar rejects is used verbatim for every step, as in A1111.
3. `parse_attention`: emphasis `(x)`, `(x:1.3)`, `[x]`, escapes and `BREAK` turn one variant
   text into weighted fragments for the tokenizer.

Where A1111 crashes on a prompt we answer a clear 400 instead (`PromptSyntaxError`, raised by
`parse_attention` for an emphasis weight that is not a number, e.g. `(x:1.1.1)`) or compute
what A1111's arithmetic means (an editing step of `1e999` is "never switch" here, an
OverflowError there). Nothing in this module imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import lark

from webui_api.errors import BadRequest

# The prompt-editing grammar (a restatement of A1111's, same language and alternative order):
# runs of stray brackets/colons are text; "(...)", "(...:...)" and "[...]" are emphasis and
# copied through with their brackets; "[a:b:N]" is an edit; "[a|b|...]" an alternation.
SCHEDULE_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""
_SCHEDULE_PARSER = lark.Lark(SCHEDULE_GRAMMAR)  # immutable after construction; parse() keeps no state

MAX_BRACKET_DEPTH = 150  # past ~200 the parser's recursion overflows (A1111: RecursionError, a 500)

_AND_SPLIT = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.DOTALL)

# Tokens of the emphasis syntax, tried in this order at every position.
_ATTENTION_TOKEN = re.compile(
    r"""\\[()\[\]\\]           # escaped bracket or backslash: that character, literally
    | \\                       # a lone backslash: dropped
    | [(\[]                    # opening bracket
    | :\s*([+-]?[.\d]+)\s*\)   # ":weight)" closing a round bracket
    | [)\]]                    # closing bracket
    | [^\\()\[\]:]+            # a run of plain text
    | :                        # a colon that closes nothing
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1.0  # the marker fragment ("BREAK", -1) closes the current 75-token chunk
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")  # A1111 option `emphasis`


class PromptSyntaxError(BadRequest, ValueError):
    """A prompt A1111 would fail on (a 400 here); the message names the text and the
    character position. Also a ValueError, since that is what A1111 raises."""


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightedFragment:
    """A piece of prompt text with its emphasis multiplier (one entry of A1111's
    parse_prompt_attention output)."""

    text: str
    weight: float = 1.0

    @property
    def is_break(self) -> bool:
        """Only a top-level BREAK is a chunk break; inside brackets its weight was scaled and
        A1111 then tokenises the word "BREAK" literally."""
        return self.text == "BREAK" and self.weight == BREAK_WEIGHT


@dataclass(frozen=True)
class SubPrompt:
    """One AND part of a positive prompt and its guidance weight."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class ScheduledText:
    """The prompt text to use for every denoiser call up to and including `end_at_step`."""

    end_at_step: int
    text: str


@dataclass(frozen=True)
class StepFrame:
    """How `[a:b:N]` numbers map to steps in one sampling pass.

    First pass: N counts from 0 and fractions scale `steps`. Hires pass (A1111's "new"
    timelines): integers count from the end of the first pass and fractions from 1.0, so
    `[a:b:15]` with 10 + 10 steps switches 5 steps into the hires pass. Old timelines
    (`use_old_scheduling`) always use the first-pass frame and treat any N < 1 as a fraction.
    """

    steps: int
    int_offset: int = 0
    fraction_offset: float = 0.0
    old_scheduling: bool = False

    @classmethod
    def for_pass(cls, base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False) -> StepFrame:
        if base_steps < 1:
            raise ValueError(f"prompt schedules need at least 1 step, got {base_steps}")
        if hires_steps is None or use_old_scheduling:
            return cls(steps=base_steps, old_scheduling=use_old_scheduling)
        if hires_steps < 1:
            raise ValueError(f"hires prompt schedules need at least 1 step, got {hires_steps}")
        return cls(steps=hires_steps, int_offset=base_steps, fraction_offset=1.0)

    def switch_step(self, number: str) -> int:
        """The last step of the "before" text of an edit written with `number`.

        A1111 truncates toward zero and caps at `steps`; the cap is applied before the
        truncation here so that huge numbers (1e999) mean "never" instead of overflowing.
        Values below 1 never switch on their own, so clamping them to 0 changes nothing.
        """
        value = float(number)
        if self.old_scheduling:
            value = value * self.steps if value < 1 else value
        elif "." in number:
            value = (value - self.fraction_offset) * self.steps
        else:
            value = value - self.int_offset
        return int(max(min(value, float(self.steps)), 0.0))


# ---------------------------------------------------------------------------
# AND: composable sub-prompts
# ---------------------------------------------------------------------------


def split_subprompts(prompt: str) -> tuple[SubPrompt, ...]:
    """A1111's AND split: whole-word, case-sensitive `AND`; a sub-prompt ending in
    `:number` (no exponent) takes that weight; trailing whitespace is dropped, leading kept."""
    parts = []
    for part in _AND_SPLIT.split(prompt):
        match = _TRAILING_WEIGHT.match(part)
        assert match is not None  # every string matches: the weight group is optional
        text, weight = match.group(1), match.group(2)
        parts.append(SubPrompt(text=text, weight=1.0 if weight is None else float(weight)))
    return tuple(parts)


# ---------------------------------------------------------------------------
# Prompt editing and alternation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Edit:
    """`[before:after:number]`; `before` is empty for `[after:number]`."""

    before: _Sequence
    after: _Sequence
    number: str


@dataclass(frozen=True)
class _Alternation:
    """`[a|b|...]`: option (step - 1) mod n at each step."""

    options: tuple[_Sequence, ...]


_Node = str | _Edit | _Alternation
_Sequence = tuple[_Node, ...]


def _to_sequence(node: lark.Tree | lark.Token | None) -> _Sequence:
    """Turn a lark subtree into our nodes: text stays text (brackets of emphasis included),
    edits and alternations become nodes; optional parts that are absent become ()."""
    if node is None:
        return ()
    if isinstance(node, lark.Token):
        return (str(node),)
    if node.data == "scheduled":
        before, after, _, number, _ = node.children
        return (_Edit(_to_sequence(before), _to_sequence(after), str(number)),)
    if node.data == "alternate":
        return (_Alternation(tuple(_to_sequence(child) for child in node.children)),)
    return tuple(item for child in node.children for item in _to_sequence(child))


def _edit_steps(sequence: _Sequence, frame: StepFrame) -> set[int]:
    """Every step at which some part of the prompt changes (nested edits included)."""
    steps: set[int] = set()
    for node in sequence:
        if isinstance(node, _Edit):
            when = frame.switch_step(node.number)
            if when >= 1:
                steps.add(when)
            steps |= _edit_steps(node.before, frame) | _edit_steps(node.after, frame)
        elif isinstance(node, _Alternation):
            steps |= set(range(1, frame.steps + 1))
            for option in node.options:
                steps |= _edit_steps(option, frame)
    return steps


def _render(sequence: _Sequence, step: int, frame: StepFrame) -> str:
    """The text of the prompt at `step` (1-based boundary of a schedule entry)."""
    pieces = []
    for node in sequence:
        if isinstance(node, _Edit):
            chosen = node.before if step <= frame.switch_step(node.number) else node.after
            pieces.append(_render(chosen, step, frame))
        elif isinstance(node, _Alternation):
            pieces.append(_render(node.options[(step - 1) % len(node.options)], step, frame))
        else:
            pieces.append(node)
    return "".join(pieces)


def bracket_depth(text: str) -> int:
    """The deepest nesting of ( and [ (escapes ignored), to refuse prompts the parser cannot
    walk before it recurses too deeply."""
    depth = deepest = 0
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth = max(depth - 1, 0)
    return deepest


def check_bracket_depth(prompt: str) -> None:
    """400 for prompts nested deeper than MAX_BRACKET_DEPTH (A1111 answers them with a 500)."""
    depth = bracket_depth(prompt)
    if depth > MAX_BRACKET_DEPTH:
        raise PromptSyntaxError(
            f"Prompt nests brackets {depth} levels deep; at most {MAX_BRACKET_DEPTH} are supported",
            errors=f"prompt: {prompt[:200]!r}",
        )


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt parsed once for prompt editing; schedules for any step count come from it.

    `sequence` is None when the grammar rejects the prompt: A1111 then uses it verbatim.
    """

    text: str
    sequence: _Sequence | None

    def schedule(
        self, steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
    ) -> tuple[ScheduledText, ...]:
        """A1111's prompt schedule: (end_at_step, text) for every step at which the text
        changes, always ending with the pass's step count."""
        frame = StepFrame.for_pass(steps, hires_steps, use_old_scheduling)
        if self.sequence is None:
            return (ScheduledText(frame.steps, self.text),)
        boundaries = sorted(_edit_steps(self.sequence, frame) | {frame.steps})
        return tuple(ScheduledText(step, _render(self.sequence, step, frame)) for step in boundaries)

    def differs_with_old_timelines(self, steps: int, hires_steps: int | None = None) -> bool:
        """A1111 writes "Old prompt editing timelines: True" when, with that option on, the
        old and new rules give different schedules for some prompt of the batch."""
        return self.schedule(steps, hires_steps, False) != self.schedule(steps, hires_steps, True)


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Parse the prompt-editing syntax.

    Editing and alternation only exist inside "[...]", and without them every character is
    copied to the output, so a prompt without "[" skips the (superlinear) Earley parse: on
    long prompts with many brackets it takes seconds, in A1111 as here.
    """
    if "[" not in prompt:
        return ParsedPrompt(prompt, (prompt,))
    check_bracket_depth(prompt)
    try:
        tree = _SCHEDULE_PARSER.parse(prompt)
    except lark.exceptions.LarkError:
        return ParsedPrompt(prompt, None)
    return ParsedPrompt(prompt, _to_sequence(tree))


def prompt_schedule(
    prompt: str, steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> tuple[ScheduledText, ...]:
    """The schedule of one prompt (see `ParsedPrompt.schedule`).

    `steps` is the sampler's total step count (doubled for second-order samplers); for a
    hires pass give the first pass's total as `steps` and the hires total as `hires_steps`.
    """
    return parse_prompt(prompt).schedule(steps, hires_steps, use_old_scheduling)


def schedules_differ_with_old_timelines(prompt: str, steps: int, hires_steps: int | None = None) -> bool:
    return parse_prompt(prompt).differs_with_old_timelines(steps, hires_steps)


# ---------------------------------------------------------------------------
# Emphasis
# ---------------------------------------------------------------------------


@dataclass
class _AttentionScan:
    """Fragments found so far (as [text, weight] pairs) and the open brackets' start indexes."""

    fragments: list[list]
    round_open: list[int]
    square_open: list[int]

    def scale_from(self, start: int, multiplier: float) -> None:
        for fragment in self.fragments[start:]:
            fragment[1] *= multiplier

    def add_text(self, text: str) -> None:
        """Plain text at weight 1.0, with a BREAK marker wherever the word BREAK stands alone."""
        for index, part in enumerate(_BREAK_WORD.split(text)):
            if index > 0:
                self.fragments.append(["BREAK", BREAK_WEIGHT])
            self.fragments.append([part, 1.0])

    def close_unbalanced(self) -> None:
        """Brackets never closed still weigh everything after them (round first, as A1111)."""
        for start in self.round_open:
            self.scale_from(start, ROUND_MULTIPLIER)
        for start in self.square_open:
            self.scale_from(start, SQUARE_MULTIPLIER)


def _weight_value(text: str, match: re.Match) -> float:
    """The number of a ":weight)" closer; A1111 raises a bare ValueError on "1.1.1", we a 400."""
    raw = match.group(1)
    try:
        return float(raw)
    except ValueError:
        raise PromptSyntaxError(
            f"Emphasis weight {raw!r} at character {match.start(1)} of prompt text {text!r} is not a number",
            errors=f"expected (text:number), e.g. (cat:1.2); received {match.group(0)!r}",
        ) from None


def _scan(scan: _AttentionScan, text: str, match: re.Match) -> None:
    """Apply one emphasis token; a closer with nothing open is plain text."""
    token = match.group(0)
    if token.startswith("\\"):
        scan.fragments.append([token[1:], 1.0])
    elif token == "(":
        scan.round_open.append(len(scan.fragments))
    elif token == "[":
        scan.square_open.append(len(scan.fragments))
    elif match.group(1) is not None and scan.round_open:
        scan.scale_from(scan.round_open.pop(), _weight_value(text, match))
    elif token == ")" and scan.round_open:
        scan.scale_from(scan.round_open.pop(), ROUND_MULTIPLIER)
    elif token == "]" and scan.square_open:
        scan.scale_from(scan.square_open.pop(), SQUARE_MULTIPLIER)
    else:
        scan.add_text(token)


def _merge_equal_weights(fragments: list[list]) -> list[WeightedFragment]:
    """Adjacent fragments with exactly equal weights become one, as A1111 does."""
    merged: list[list] = []
    for text, weight in fragments:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [WeightedFragment(text, weight) for text, weight in merged]


def parse_attention(text: str) -> list[WeightedFragment]:
    """A1111's parse_prompt_attention: weighted fragments of one (schedule variant) text.

    Round brackets multiply by 1.1 (or the given weight), square ones by 1/1.1; unclosed
    brackets extend to the end; an empty result is one empty fragment of weight 1.0.
    """
    scan = _AttentionScan(fragments=[], round_open=[], square_open=[])
    for match in _ATTENTION_TOKEN.finditer(text):
        _scan(scan, text, match)
    scan.close_unbalanced()
    return _merge_equal_weights(scan.fragments or [["", 1.0]])


def fragments_for_emphasis(text: str, emphasis: str) -> list[WeightedFragment]:
    """The fragments the tokenizer sees: with emphasis "None" the parser is skipped and the
    text is one fragment (brackets and BREAK stay literal)."""
    if emphasis == "None":
        return [WeightedFragment(text, 1.0)]
    return parse_attention(text)

"""A seeded corpus of random prompts in A1111's syntax, and a canonical digest of what a
parser makes of them (AND parts, schedules in three step frames, emphasis fragments).

The digest of A1111 v1.10's own parser over this corpus is recorded in
test_engine_prompts.py; this module imports nothing from the project, so the same code can
be run against A1111's parser to recompute it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable

WORDS = ["a", "cat", " ", "dog ", "x", "", " ", "\\(", "\\]", "\\\\", ",", "BREAK", " AND ", "e", "-", ":1.5"]
NUMBERS = [
    "1",
    "5",
    "0.5",
    ".5",
    "1.0",
    "0",
    "25",
    "-3",
    "1e1",
    "1.5",
    "10",
    "3",
    " 7 ",
    "0.999",
    "2.",
    "+4",
    "1.1.1",
    "",
    "0.25",
]
STRAY = ["(", ")", "[", "]", ":", "|"]


def _piece(rng: random.Random, depth: int) -> str:
    if depth > 3 or rng.random() < 0.35:
        return rng.choice(WORDS)
    roll = rng.random()
    inner = lambda: _piece(rng, depth + 1)  # noqa: E731
    if roll < 0.2:
        return f"[{inner()}:{inner()}:{rng.choice(NUMBERS)}]"
    if roll < 0.3:
        return f"[{inner()}:{rng.choice(NUMBERS)}]"
    if roll < 0.45:
        return "[" + "|".join(inner() for _ in range(rng.randint(1, 3))) + "]"
    if roll < 0.55:
        return f"({inner()}:{rng.choice(NUMBERS)})"
    if roll < 0.62:
        return f"({inner()})"
    if roll < 0.69:
        return f"[{inner()}]"
    if roll < 0.74:
        return rng.choice(STRAY)
    return "".join(inner() for _ in range(rng.randint(1, 3)))


def corpus(seed: int = 1111, count: int = 200) -> list[str]:
    rng = random.Random(seed)
    return ["".join(_piece(rng, 0) for _ in range(rng.randint(1, 3))) for _ in range(count)]


def _canonical(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(float(value))
    return [_canonical(v) for v in value]


def digest(
    prompts: list[str],
    split: Callable[[str], list[tuple[str, float]]],
    schedule: Callable[[str, int, int | None, bool], list[tuple[int, str]]],
    attention: Callable[[str], list[tuple[str, float]]],
) -> str:
    """sha256 over every prompt's AND parts, their schedules (20 steps; hires 10 + 10; old
    timelines at 20) and the emphasis fragments of every variant ("error" where the parser
    refuses a weight)."""
    records = []
    for prompt in prompts:
        for text, weight in split(prompt):
            frames = [schedule(text, 20, None, False), schedule(text, 10, 10, False), schedule(text, 20, None, True)]
            fragments = []
            for entry in frames[0]:
                try:
                    fragments.append(attention(entry[1]))
                except ValueError:
                    fragments.append("error")
            records.append([prompt, text, weight, frames, fragments])
    return hashlib.sha256(json.dumps(_canonical(records), ensure_ascii=False).encode()).hexdigest()

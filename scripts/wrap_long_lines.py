"""Wrap the lines ruff reports as too long (E501), leaving every other line as it is.

`ruff format` would restyle whole files; this applies its layout only to the statements that
hold a long line, so merges stay small. Lines that are one long string literal are split into
adjacent literals (the value is unchanged). Whatever is still too long afterwards is left for a
person. Usage: python scripts/wrap_long_lines.py [paths...]   (default: the current directory)
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys


def long_lines(paths: list[str]) -> dict[str, set[int]]:
    """{file: 0-based rows} of ruff's E501 findings."""
    found = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "E501", "--output-format", "json", *paths],
        capture_output=True, text=True, check=False,
    ).stdout
    rows: dict[str, set[int]] = {}
    for finding in json.loads(found or "[]"):
        rows.setdefault(finding["filename"], set()).add(finding["location"]["row"] - 1)
    return rows


def formatted(path: str, source: str) -> str | None:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", path, "-"],
        input=source, capture_output=True, text=True, check=False,
    )
    return done.stdout if done.returncode == 0 else None


def wrap_statements(source: str, layout: str, rows: set[int]) -> str:
    """The source with the formatter's hunks applied where they touch one of `rows`."""
    old, new = source.split("\n"), layout.split("\n")
    result: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        touches = i2 > i1 and any(i1 <= row < i2 for row in rows)
        result += new[j1:j2] if tag != "equal" and touches else old[i1:i2]
    return "\n".join(result)


_STRING_LINE = re.compile(r'^(\s*)(f?)(["\'])(.*)\3(,?\)?,?)$')


def split_string_line(line: str, limit: int) -> list[str]:
    """A line that is one string literal, as two adjacent literals within `limit` columns."""
    match = _STRING_LINE.match(line)
    if match is None:
        return [line]
    indent, prefix, quote, body, tail = match.groups()
    if quote in body.replace("\\" + quote, ""):
        return [line]
    room = limit - len(indent) - len(prefix) - 3
    depth, cut = 0, None
    for index, char in enumerate(body):
        depth += (char == "{") - (char == "}")
        if char == " " and depth == 0 and index + 1 <= room and body[index - 1] != "\\":
            cut = index + 1
    if cut is None:
        return [line]
    first, rest = body[:cut], body[cut:]
    first_prefix = "f" if prefix and "{" in first else ""
    rest_prefix = "f" if prefix and "{" in rest else ""
    return [f"{indent}{first_prefix}{quote}{first}{quote}", f"{indent}{rest_prefix}{quote}{rest}{quote}{tail}"]


def main(paths: list[str], limit: int = 120) -> None:
    for path, rows in long_lines(paths).items():
        source = open(path, encoding="utf8").read()
        layout = formatted(path, source)
        wrapped = source if layout is None else wrap_statements(source, layout, rows)
        compile(wrapped, path, "exec")  # never write a file that no longer parses
        open(path, "w", encoding="utf8").write(wrapped)
    for path, rows in long_lines(paths).items():
        lines = open(path, encoding="utf8").read().split("\n")
        for row in sorted(rows, reverse=True):
            lines[row : row + 1] = split_string_line(lines[row], limit)
        text = "\n".join(lines)
        compile(text, path, "exec")
        open(path, "w", encoding="utf8").write(text)


if __name__ == "__main__":
    main(sys.argv[1:] or ["."])

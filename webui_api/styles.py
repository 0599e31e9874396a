"""A1111's prompt styles (styles.csv): read for GET /sdapi/v1/prompt-styles and applied to
the prompts of a generation through the request's `styles` field.

The file has a header row `name,prompt,negative_prompt` (the pre-1.0 `name,text` layout is
read too); rows whose name starts with "#" are comments. A1111 reads every file given with
--styles-file (default `<data-dir>/styles.csv`); a later file's style replaces an earlier one
of the same name, and a missing file simply means no styles.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROMPT_PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


def style_files(settings) -> list[Path]:
    """The styles files a server reads: --styles-file, else <data-dir>/styles.csv."""
    return list(settings.styles_files) or [settings.data_dir / "styles.csv"]


def read_styles(paths: Iterable[Path]) -> list[PromptStyle]:
    styles: dict[str, PromptStyle] = {}
    for path in paths:
        for style in _read_file(Path(path)):
            styles[style.name] = style
    return list(styles.values())


def _read_file(path: Path) -> list[PromptStyle]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = csv.DictReader(handle, skipinitialspace=True)
        return [_style_of(row) for row in rows if row.get("name") and not row["name"].startswith("#")]


def _style_of(row: Mapping[str, str | None]) -> PromptStyle:
    prompt = row.get("prompt") if "prompt" in row else row.get("text")
    return PromptStyle(row.get("name") or "", prompt or "", row.get("negative_prompt") or "")


def merge_style(style_text: str, prompt: str) -> str:
    """A1111's merge: a style with "{prompt}" wraps the prompt (every occurrence is replaced);
    any other style is appended after ", ", both sides stripped and empty sides dropped."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, names: Sequence[str], styles: Sequence[PromptStyle], negative: bool = False) -> str:
    """Apply the named styles in request order. An unknown name counts as an empty style,
    as in A1111: it changes nothing but the prompt's surrounding whitespace."""
    by_name = {style.name: style for style in styles}
    for name in names:
        style = by_name.get(name)
        text = "" if style is None else (style.negative_prompt if negative else style.prompt)
        prompt = merge_style(text, prompt)
    return prompt


def unknown_styles(names: Sequence[str], styles: Sequence[PromptStyle]) -> list[str]:
    known = {style.name for style in styles}
    return [name for name in names if name not in known]

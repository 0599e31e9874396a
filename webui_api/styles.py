"""A1111's prompt styles (styles.csv): read for GET /sdapi/v1/prompt-styles.

The file has a header row `name,prompt,negative_prompt`; A1111 reads every file given with
--styles-file (default `<data-dir>/styles.csv`). A missing file simply means no styles.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


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
        return [
            PromptStyle(row.get("name") or "", row.get("prompt") or "", row.get("negative_prompt") or "")
            for row in rows
            if row.get("name")
        ]

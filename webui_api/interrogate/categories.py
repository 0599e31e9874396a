"""The CLIP interrogator's category lists (artists, flavors, mediums, movements).

A1111 reads every `*.txt` in the `interrogate` folder of its install (one candidate phrase per
line; a file named `name.topN.txt` contributes its N best matches, the others one), and when that
folder does not exist downloads these four files from the clip-interrogator project (MIT
licence) into it. They ship with this package instead; a `<data-dir>/interrogate` folder, when
present, replaces them just as it does in A1111. Files are read in name order (A1111 takes the
folder's listing order, which the file system decides).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DEFAULT_CATEGORIES = ("artists", "flavors", "mediums", "movements")
_TOP_N = re.compile(r"\.top(\d+)$")


@dataclass(frozen=True)
class Category:
    """One category file: its name (file stem), how many matches it contributes, its phrases."""

    name: str
    topn: int
    items: tuple[str, ...]


def category_files(folder: Path | None) -> list[tuple[str, str]]:
    """(stem, text) of every category file: the user's folder when it exists, else the shipped ones."""
    if folder is not None and folder.is_dir():
        return [(path.stem, path.read_text(encoding="utf8")) for path in sorted(folder.glob("*.txt"))]
    data = resources.files(__package__).joinpath("data")
    return [(name, data.joinpath(f"{name}.txt").read_text(encoding="utf8")) for name in DEFAULT_CATEGORIES]


def load_categories(folder: Path | None, skip: Iterable[str] = ()) -> list[Category]:
    """A1111's InterrogateModels.categories(): every file not in `interrogate_clip_skip_categories`."""
    skipped = set(skip)
    categories = []
    for stem, text in category_files(folder):
        if stem in skipped:
            continue
        match = _TOP_N.search(stem)
        topn = 1 if match is None else int(match.group(1))
        categories.append(Category(stem, topn, tuple(line.strip() for line in text.splitlines())))
    return categories


def limited(items: tuple[str, ...], dict_limit: int) -> list[str]:
    """`interrogate_clip_dict_limit`: only the first N lines of a file are ranked (0: all)."""
    return list(items[:int(dict_limit)] if dict_limit != 0 else items)

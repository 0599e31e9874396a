"""One rule for every file the server writes: it lands inside a folder the operator chose.

Output folders, filename patterns, grids, extras, task results, caches and logs are all
joined onto their root with `resolve_inside`, which normalises the joined path (".." and
absolute parts included) and refuses anything that ends up outside the root. The check is
lexical (no symlink resolution): the API cannot create links, and an operator who points a
folder of the data dir at another disk with a symlink keeps that working.

Roots come from the operator (the data dir, or an absolute output folder set in config.json
or through POST /options); values a single request sends in `override_settings` must be
`confined` (relative, no ".." segment), so a request can never choose a root of its own.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import BadRequest

_SEPARATORS = re.compile(r"[\\/]+")


class UnsafePath(BadRequest):
    """A path that would leave its root folder (400, A1111's error body)."""


def is_confined(value: str) -> bool:
    """A relative path without ".." segments, on POSIX and Windows reading alike."""
    text = str(value)
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        return False
    return ".." not in _SEPARATORS.split(text)


def check_confined(value: str, what: str) -> str:
    """`value` when `is_confined`, else UnsafePath naming `what` (e.g. the option key)."""
    if not is_confined(value):
        raise UnsafePath(
            f"{what} must be a relative path inside the server's data folder, got {value!r}",
            errors=f"{what}: absolute paths and '..' segments are not allowed here",
        )
    return value


def resolve_inside(root: Path, *parts: str | Path, what: str = "path") -> Path:
    """`root` joined with `parts`, normalised; UnsafePath unless the result is `root` or below it."""
    base = Path(os.path.normpath(os.path.abspath(root)))
    candidate = Path(os.path.normpath(os.path.join(base, *(str(part) for part in parts))))
    if candidate != base and base not in candidate.parents:
        joined = "/".join(str(part) for part in parts)
        raise UnsafePath(
            f"{what} {joined!r} would be written outside {base.name or base}",
            errors=f"{what}: the resolved path leaves its folder",
        )
    return candidate


def output_root(configured: str, data_dir: Path) -> tuple[Path, str]:
    """(root, path below it) of an output-folder option: an absolute folder is its own root
    (the operator set it); a relative one lives under the data dir."""
    if Path(configured).is_absolute():
        return Path(configured), ""
    return Path(data_dir), configured

"""Preprocessors (minimal stand-in): "none" and "invert" only.

The full set (canny, depth, openpose, ...) comes from the preprocessors work; this module
implements the same contract so ControlNet units run without it:
`run_preprocessor(module, image, resolution, threshold_a, threshold_b, annotator_dir)` takes
an (H, W, 3) uint8 RGB image and returns an (h, w, 3) uint8 map; `find_module(name)` gives
the canonical name of a module or alias, and unknown names are a 422.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import ValidationFailed

ALIASES = {"none": "none", "invert": "invert", "invert (from white bg & black line)": "invert"}


def find_module(name: str) -> str:
    """The canonical module name for `name` (case-insensitive, aliases resolved)."""
    found = ALIASES.get(str(name).strip().lower())
    if found is None:
        raise ValidationFailed(f"ControlNet module {name!r} is not available; available: {sorted(set(ALIASES.values()))}")
    return found


def run_preprocessor(
    module: str,
    image: np.ndarray,
    resolution: int,
    threshold_a: Optional[float],
    threshold_b: Optional[float],
    annotator_dir: Path,
) -> np.ndarray:
    """The control map of `image` for `module` ("none" returns the image unchanged)."""
    canonical = find_module(module)
    if canonical == "none":
        return image
    return (255 - image.astype(np.int16)).astype(np.uint8)

"""The one argument every preprocessor function receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .annotators import AnnotatorCache
    from .catalog import ModuleInfo


PoseCallback = Callable[[dict[str, Any]], None]  # receives the openpose JSON of one image


@dataclass(frozen=True)
class PreprocessCall:
    """A request already resolved against the module's sliders (no -1 or out-of-range values left).

    `rng` is the numpy generator for the modules that draw random numbers (shuffle), seeded by
    the caller so that a generation with a fixed seed gets the same map every time. `on_pose`
    receives the detected poses of the openpose modules (the extension's pose JSON).
    """

    module: ModuleInfo
    image: np.ndarray  # (H, W, 3) uint8 RGB
    resolution: float
    threshold_a: float | None
    threshold_b: float | None
    rng: np.random.RandomState
    annotator_dir: Path
    cache: AnnotatorCache
    on_pose: PoseCallback | None = None

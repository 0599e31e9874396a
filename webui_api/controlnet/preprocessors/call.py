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

    @property
    def required_a(self) -> float:
        """Threshold A of a module that has an A slider (so it is never None there)."""
        if self.threshold_a is None:
            raise ValueError(f"ControlNet module {self.module.name!r} has no threshold A")
        return self.threshold_a

    @property
    def required_b(self) -> float:
        """Threshold B of a module that has a B slider (so it is never None there)."""
        if self.threshold_b is None:
            raise ValueError(f"ControlNet module {self.module.name!r} has no threshold B")
        return self.threshold_b

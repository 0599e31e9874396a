"""Loaded postprocessing models (upscalers, face restorers, face detectors), kept between calls.

One `PostprocessModels` belongs to the server's Runtime and is used from the scheduler's
worker thread only (every model runs there), so it needs no lock. Models are keyed by
(kind, file, device): a file is read from disk once, and a request that only rescans the
folders (the extras route builds its upscaler catalog per call) still finds it loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelKey:
    kind: str  # "upscaler" | "GFPGAN" | "CodeFormer" | "detector"
    path: Path
    device: str


@dataclass
class PostprocessModels:
    """Models by key; `loads` counts disk loads (tests and logs can see reuse)."""

    _models: dict[ModelKey, Any] = field(default_factory=dict, repr=False)
    loads: int = 0

    def get(self, key: ModelKey, load: Callable[[], Any]) -> Any:
        """The cached model for `key`, loading it with `load()` the first time."""
        if key not in self._models:
            self._models[key] = load()
            self.loads += 1
        return self._models[key]

    def __contains__(self, key: ModelKey) -> bool:
        return key in self._models

    def __len__(self) -> int:
        return len(self._models)

    def drop(self, key: ModelKey) -> None:
        """Forget one model (the next use reloads it)."""
        self._models.pop(key, None)

    def clear(self) -> None:
        self._models.clear()

"""The NSFW output classifier: the CompVis safety checker architecture, from a local folder.

This is diffusers' `StableDiffusionSafetyChecker` (transformers' CLIPVisionModel, a linear
projection and 17 + 3 concept embeddings with per-concept thresholds): the model A1111
extensions and diffusers' pipelines use. Its weights are read from the folder the operator
names (config.json + model.safetensors or pytorch_model.bin, optionally
preprocessor_config.json), as `save_pretrained` writes it; nothing is downloaded.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NotFound


@dataclass
class SafetyClassifier:
    """Loads the checker on first use (once, under a lock) and says which images it flags."""

    folder: Path
    device: str = "cpu"
    _loaded: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def flags(self, images: Sequence[Any]) -> list[bool]:
        """One bool per PIL image: True where any concept score is above its threshold."""
        if not images:
            return []
        import numpy as np
        import torch

        model, processor = self._model()
        pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt").pixel_values
        placeholders = np.zeros((len(images), 1, 1, 3), dtype=np.float32)  # the checker blacks these out, not ours
        with torch.inference_mode():
            _, flagged = model(clip_input=pixels.to(self.device, model.dtype), images=placeholders)
        return [bool(value) for value in flagged]

    def _model(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                self._loaded = _load(self.folder, self.device)
            return self._loaded


def _load(folder: Path, device: str) -> tuple[Any, Any]:
    """The checker and its image processor from `folder`; a missing folder or config is a 404
    naming the path (the operator configured it, so the log says what to put there)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    if not (folder / "config.json").is_file():
        raise NotFound(f"NSFW classifier not found: {folder / 'config.json'} is missing",
                       errors="put the safety checker's config.json and weights in the --nsfw-check-dir folder")
    model: Any = StableDiffusionSafetyChecker.from_pretrained(str(folder), local_files_only=True)
    model = model.to(device).eval()
    if (folder / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
    else:  # CLIP's own preprocessing at the model's input size
        side = model.config.vision_config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return model, processor

"""Where A1111 keeps the interrogator's weight files, and reading them.

- BLIP: `models/BLIP/*.pth` (A1111 downloads `model_base_caption_capfilt_large.pth` there and
  uses the first `.pth` it finds).
- DeepDanbooru: `models/torch_deepdanbooru/*.pt` (`model-resnet_custom_v3.pt`).
- CLIP ViT-L/14: `ViT-L-14.pt` in `--clip-models-path`, else `models/CLIP` (where the weights
  fetcher puts it), else the `clip` package's default download folder `~/.cache/clip` that an
  A1111 install without the flag has it in.

Folders come from the weights registry's folder map, so a file fetched on first use (see
`webui_api.weights`) lands exactly where this module looks. `REGISTRY_NAMES` are the pinned
entries' names.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadRequest


@dataclass(frozen=True)
class WeightFile:
    """One interrogator weight file as A1111 names and fetches it."""

    what: str
    file_name: str
    suffix: str
    url: str
    registry_name: str  # its entry in webui_api.weights.registry


BLIP_FILE = WeightFile(
    "BLIP caption model", "model_base_caption_capfilt_large.pth", ".pth",
    "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_base_caption_capfilt_large.pth",
    "BLIP caption",
)
DEEPDANBOORU_FILE = WeightFile(
    "DeepDanbooru tagger", "model-resnet_custom_v3.pt", ".pt",
    "https://github.com/AUTOMATIC1111/TorchDeepDanbooru/releases/download/v1/model-resnet_custom_v3.pt",
    "deepdanbooru",
)
CLIP_FILE = WeightFile(
    "CLIP ViT-L/14", "ViT-L-14.pt", ".pt",
    "https://openaipublic.azureedge.net/clip/models/"
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "CLIP ViT-L/14",
)


class MissingInterrogateWeights(BadRequest):
    """An interrogator model whose weight file is not in A1111's folder (A1111 would download it)."""

    error_name = "FileNotFoundError"

    def __init__(self, weight: WeightFile, folder: Path) -> None:
        detail = (f"{weight.what} weights not found: put {weight.file_name} into {folder} "
                  f"(A1111 downloads it from {weight.url})")
        super().__init__(detail, errors=detail)
        self.file_name = weight.file_name
        self.folder = str(folder)


@dataclass(frozen=True)
class InterrogateFolders:
    """The folders the interrogator reads, from the server's settings."""

    blip: Path
    deepdanbooru: Path
    clip: Path
    clip_fallback: Path | None = None  # ~/.cache/clip when no --clip-models-path was given

    @classmethod
    def under(cls, models_dir: Path, cmd_flags: Mapping[str, Any] | None = None) -> InterrogateFolders:
        from ..weights.folders import WeightFolders

        folders = WeightFolders.under(models_dir, cmd_flags)
        fallback = None if (cmd_flags or {}).get("clip_models_path") else Path(os.path.expanduser("~/.cache/clip"))
        return cls(blip=folders.folder("BLIP"), deepdanbooru=folders.folder("torch_deepdanbooru"),
                   clip=folders.folder("CLIP"), clip_fallback=fallback)

    @classmethod
    def from_settings(cls, settings: Any) -> InterrogateFolders:
        return cls.under(Path(settings.models_dir), settings.cmd_flags)

    def blip_file(self) -> Path:
        return find_weight(self.blip, BLIP_FILE)

    def deepdanbooru_file(self) -> Path:
        return find_weight(self.deepdanbooru, DEEPDANBOORU_FILE)

    def clip_file(self) -> Path:
        """`clip.load` reads exactly `<root>/ViT-L-14.pt`."""
        for folder in (self.clip, self.clip_fallback):
            if folder is not None and (folder / CLIP_FILE.file_name).is_file():
                return folder / CLIP_FILE.file_name
        raise MissingInterrogateWeights(CLIP_FILE, self.clip)

    def missing(self, model: str) -> tuple[str, ...]:
        """Registry names of the files `model` ("clip" / "deepdanbooru") needs and lacks."""
        lookups = ((BLIP_FILE, self.blip_file), (CLIP_FILE, self.clip_file)) if model == "clip" else \
            ((DEEPDANBOORU_FILE, self.deepdanbooru_file),)
        names = []
        for weight, lookup in lookups:
            try:
                lookup()
            except MissingInterrogateWeights:
                names.append(weight.registry_name)
        return tuple(names)


def find_weight(folder: Path, weight: WeightFile) -> Path:
    """A1111's load_models: the known file name, else the first file with the suffix."""
    preferred = folder / weight.file_name
    if preferred.is_file():
        return preferred
    found = sorted(path for path in folder.glob(f"*{weight.suffix}") if path.is_file()) if folder.is_dir() else []
    if not found:
        raise MissingInterrogateWeights(weight, folder)
    return found[0]


def read_torch_pickle(path: Path) -> dict[str, Any]:
    """A `.pt`/`.pth` file as a dict, unpickled with torch's weights-only loader (no code runs)."""
    import torch

    from ..engine.loading.files import UnusableModelFile

    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError) as err:
        raise UnusableModelFile(path, f"not a readable plain PyTorch file ({type(err).__name__}: {err})") from err
    if not isinstance(raw, dict):
        raise UnusableModelFile(path, f"expected a state dict, found {type(raw).__name__}")
    return raw

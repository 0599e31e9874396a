"""The ControlNet model files a server offers, named and matched as the extension does.

Folders: `<models>/ControlNet` (A1111's layout) and the extension's `--controlnet-dir`.
Files (.safetensors, .pth, .ckpt, .pt, .bin) hold a ControlNet in the original layout (or
in diffusers' names); a folder with a diffusers `config.json` whose class is ControlNetModel
is one model too. Entries are titled "<file stem> [<hash>]" with A1111's legacy 8-hex model
hash, exactly what the extension lists and what clients send back. A name a client sends is
matched only against scanned entries (exact title, then the name without " [hash]" in any
case, then the shortest name containing it), never joined onto a path. No torch here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.loading.discovery import natural_sort_key, walk_files
from ..engine.loading.hashes import legacy_model_hash
from ..errors import NotFound

CONTROLNET_EXTENSIONS = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class ControlNetFile:
    """One /controlnet/model_list entry."""

    name: str  # file stem (folder name for diffusers folders)
    filename: str
    hash: str | None  # A1111's legacy model hash of the weights

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]" if self.hash else self.name

    @property
    def is_folder(self) -> bool:
        return Path(self.filename).is_dir()


class UnknownControlNetModel(NotFound):
    """A unit names a model that no scanned file matches."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        listed = ", ".join(available) or "none (put ControlNet models in models/ControlNet)"
        super().__init__(f"ControlNet model {name!r} not found; available: {listed}")


def controlnet_dirs(settings: Any) -> tuple[Path, ...]:
    """<models>/ControlNet, then --controlnet-dir when the command line has one."""
    extra = (getattr(settings, "cmd_flags", None) or {}).get("controlnet_dir")
    dirs = [Path(settings.models_dir) / "ControlNet"] + ([Path(extra)] if extra else [])
    return tuple(Path(os.path.abspath(d)) for d in dirs)


def is_controlnet_folder(path: Path) -> bool:
    """A diffusers ControlNetModel folder: config.json naming the class, plus weights."""
    config = path / DIFFUSERS_CONFIG
    if not config.is_file() or not any((path / w).is_file() for w in DIFFUSERS_WEIGHTS):
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("_class_name") == "ControlNetModel"


def folder_weights(path: Path) -> Path:
    return next(path / w for w in DIFFUSERS_WEIGHTS if (path / w).is_file())


def _scan_folder(root: Path) -> list[ControlNetFile]:
    if not root.is_dir():
        return []
    folders = sorted((Path(d) for d, _, _ in os.walk(root, followlinks=True) if is_controlnet_folder(Path(d))), key=str)
    found = [ControlNetFile(f.name, str(f), legacy_model_hash(folder_weights(f))) for f in folders]
    for path in walk_files(root, CONTROLNET_EXTENSIONS):
        if not any(f in path.parents for f in folders) and path.stem != "None":
            found.append(ControlNetFile(path.stem, str(path), legacy_model_hash(path)))
    return sorted(found, key=lambda entry: natural_sort_key(entry.name))


def scan_controlnets(dirs: Iterable[Path]) -> tuple[ControlNetFile, ...]:
    """Every model in `dirs`; a name found in an earlier folder wins over a later one."""
    by_name: dict[str, ControlNetFile] = {}
    for root in dirs:
        for entry in _scan_folder(root):
            by_name.setdefault(entry.name.lower(), entry)
    return tuple(by_name.values())


class ControlNetCatalog:
    """The scanned list, replaced as a whole on refresh so HTTP threads read it safely."""

    def __init__(self, dirs: Iterable[Path] = ()) -> None:
        self.dirs = tuple(dirs)
        self._files: tuple[ControlNetFile, ...] = ()
        self.refresh()

    def refresh(self) -> None:
        self._files = scan_controlnets(self.dirs)

    def files(self) -> list[ControlNetFile]:
        return list(self._files)

    def titles(self) -> list[str]:
        return [entry.title for entry in self._files]

    def find(self, name: str) -> ControlNetFile:
        """Exact title, then the name without " [hash]" (any case), then the shortest name
        containing it, as the extension's find_closest_lora_model_name."""
        found = match_model(self._files, name)
        if found is None:
            raise UnknownControlNetModel(name, self.titles())
        return found


def match_model(files: Iterable[ControlNetFile], name: str) -> ControlNetFile | None:
    files = list(files)
    wanted = str(name or "").strip()
    if not wanted or wanted.lower() == "none":
        return None
    for entry in files:
        if wanted == entry.title:
            return entry
    bare = wanted.rsplit(" [", 1)[0].lower() if wanted.endswith("]") else wanted.lower()
    for entry in files:
        if entry.name.lower() == bare:
            return entry
    containing = sorted((e for e in files if bare in e.name.lower()), key=lambda e: len(e.name))
    return containing[0] if containing else None


def annotator_dir(settings: Any) -> Path:
    """Where model-based preprocessors find their weights; one rule for generation and /detect
    (webui_api.controlnet.preprocessors.annotator_dir_for)."""
    from .preprocessors import annotator_dir_for

    return Path(os.path.abspath(annotator_dir_for(settings)))
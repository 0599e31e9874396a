"""Finding model files where A1111 looks for them, named the way A1111 names them.

Folders (A1111's defaults, each overridable by its flag):
  checkpoints   --ckpt, --ckpt-dir, <models>/Stable-diffusion   (.safetensors, .ckpt, and
                diffusers folders, which A1111 does not list)
  VAEs          <models>/VAE, --vae-dir (.safetensors, .ckpt, .pt), and *.vae.* files in the
                checkpoint folders; --vae-path names one file that overrides every choice
  LoRA          --lora-dir (<models>/Lora), --lyco-dir-backcompat (<models>/LyCORIS)
  embeddings    --embeddings-dir (<data>/embeddings)

Walks follow symlinks, skip hidden folders and sort with A1111's natural sort, so lists come
out in A1111's order. Files are only ever opened from these scans: a name a client sends is
looked up among the scanned entries, never joined onto a path, so "../x" can match nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui_api.engine.loading.hashes import HashCache, legacy_model_hash

log = logging.getLogger(__name__)

CHECKPOINT_EXTENSIONS = (".ckpt", ".safetensors", ".gguf")  # .gguf: quantized Flux transformers (Forge lists them)
VAE_SUFFIXES_NEAR_CHECKPOINTS = (".vae.ckpt", ".vae.pt", ".vae.safetensors")
VAE_EXTENSIONS = (".ckpt", ".pt", ".safetensors")
NETWORK_EXTENSIONS = (".pt", ".ckpt", ".safetensors")
EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors", ".png", ".webp", ".jxl", ".avif")  # images may carry one
CHECKPOINT_HASH_PREFIX = "checkpoint/"
MODEL_INDEX = "model_index.json"  # marks a diffusers pipeline folder


@dataclass(frozen=True)
class ModelPaths:
    """Where this server looks for models (A1111's folders and flags), all absolute."""

    data_dir: Path | None = None
    ckpt_dirs: tuple[Path, ...] = ()  # --ckpt-dir first, then <models>/Stable-diffusion
    ckpt_file: Path | None = None  # --ckpt
    vae_dirs: tuple[Path, ...] = ()  # <models>/VAE, then --vae-dir
    vae_path: Path | None = None  # --vae-path
    lora_dirs: tuple[Path, ...] = ()  # --lora-dir, --lyco-dir-backcompat
    embeddings_dirs: tuple[Path, ...] = ()
    text_encoder_dirs: tuple[Path, ...] = ()  # <models>/text_encoder (Forge's text-encoder modules)

    @classmethod
    def from_settings(cls, settings: Any) -> ModelPaths:
        """The folders of a `webui_api.settings.Settings`."""
        vae_dirs = [settings.models_dir / "VAE"] + ([settings.vae_dir] if settings.vae_dir else [])
        lora_dirs = [settings.lora_dir] + ([settings.lyco_dir] if settings.lyco_dir else [])
        return cls(
            data_dir=_absolute(settings.data_dir),
            ckpt_dirs=tuple(_absolute(p) for p in settings.ckpt_dirs),
            ckpt_file=_absolute(settings.ckpt) if settings.ckpt else None,
            vae_dirs=tuple(_absolute(p) for p in vae_dirs),
            vae_path=_absolute(settings.vae_path) if settings.vae_path else None,
            lora_dirs=tuple(_absolute(p) for p in lora_dirs),
            embeddings_dirs=(_absolute(settings.embeddings_dir),),
            text_encoder_dirs=(_absolute(settings.models_dir / "text_encoder"),),
        )

    @property
    def hash_cache_file(self) -> Path | None:
        return self.data_dir / "cache.json" if self.data_dir is not None else None


def _absolute(path: Path | str) -> Path:
    return Path(os.path.abspath(path))


def natural_sort_key(text: str) -> list[Any]:
    """A1111's sort: digit runs compare as numbers, the rest case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"([0-9]+)", text)]


def walk_files(root: Path, extensions: tuple[str, ...]) -> Iterator[Path]:
    """Files under `root` with one of `extensions` (case-insensitive), A1111's walk order."""
    if not root.is_dir():
        return
    folders = sorted(os.walk(root, followlinks=True), key=lambda entry: natural_sort_key(entry[0]))
    for folder, _, files in folders:
        if "/." in folder or "\\." in folder:
            continue
        for name in sorted(files, key=natural_sort_key):
            path = Path(folder) / name
            if path.suffix.lower() in extensions and _usable(path):
                yield path


def _usable(path: Path) -> bool:
    if path.is_symlink() and not path.exists():
        log.warning("Skipping broken symlink: %s", path)
        return False
    return True


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def checkpoint_relative_name(path: Path, paths: ModelPaths) -> str:
    """A1111's checkpoint name: the path under the checkpoint folder it was found in, else
    the file name."""
    for folder in paths.ckpt_dirs:
        try:
            return path.relative_to(folder).as_posix()
        except ValueError:
            continue
    return path.name


def diffusers_folders(root: Path) -> list[Path]:
    """Folders under `root` holding a diffusers pipeline (a `model_index.json`), in A1111's
    sort order; their own subfolders are not searched further."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders.sort(key=natural_sort_key)
        if MODEL_INDEX in files and Path(folder) != root:
            found.append(Path(folder))
            subfolders.clear()
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    return sorted(found, key=lambda path: natural_sort_key(str(path)))


def checkpoint_files(paths: ModelPaths) -> list[Path]:
    """--ckpt first (when it exists), then every checkpoint folder's files and diffusers
    folders, without duplicates and without the VAE files that live beside checkpoints."""
    found: list[Path] = []
    if paths.ckpt_file is not None:
        if paths.ckpt_file.exists():
            found.append(paths.ckpt_file)
        else:
            log.warning("Checkpoint in --ckpt not found: %s", paths.ckpt_file)
    for folder in paths.ckpt_dirs:
        files = [p for p in walk_files(folder, CHECKPOINT_EXTENSIONS) if not _inside_pipeline(p, folder)]
        for path in files + diffusers_folders(folder):
            if not path.name.lower().endswith(VAE_SUFFIXES_NEAR_CHECKPOINTS) and path not in found:
                found.append(path)
    return found


def _inside_pipeline(path: Path, root: Path) -> bool:
    """Weight files of a diffusers folder are parts of that model, not checkpoints."""
    return any((parent / MODEL_INDEX).is_file() for parent in path.parents if parent != root and root in parent.parents)


def config_near(path: Path) -> Path | None:
    """The `<name>.yaml` beside a checkpoint (A1111 takes the model config from it)."""
    candidate = path.with_suffix(".yaml")
    return candidate if candidate.is_file() else None


def describe_checkpoint(path: Path, paths: ModelPaths, hashes: HashCache) -> Any:
    """The CheckpointInfo of one file, with its sha256 if cache.json already knows it."""
    from webui_api.engine.models import CheckpointInfo

    name = checkpoint_relative_name(path, paths)
    if path.is_dir():  # a diffusers folder: no single file to hash
        return CheckpointInfo.for_file(name=name, filename=str(path), sha256=None)
    sha256 = hashes.cached(path, CHECKPOINT_HASH_PREFIX + name)
    config = config_near(path)
    return CheckpointInfo.for_file(
        name=name,
        filename=str(path),
        sha256=sha256,
        legacy_hash=legacy_model_hash(path),
        config=str(config) if config else None,
    )


CHECKSUM_SUFFIX = re.compile(r"\s*\[[^]]+]\s*$")  # A1111's re_strip_checksum


def closest_checkpoint_match(checkpoints: Iterable[Any], name: str | None) -> Any | None:
    """A1111's get_closet_checkpoint_match: an exact alias (title, name, file name, hashes), else
    the shortest title containing `name`, else the shortest containing it without a trailing
    " [checksum]" (titles kept from another install or from before hashing); None: no match.
    Only scanned entries are ever returned, so no name reaches outside the model folders."""
    if not name:
        return None
    entries = list(checkpoints)
    for info in entries:
        if name in info.aliases():
            return info
    for needle in (name, CHECKSUM_SUFFIX.sub("", name)):
        found = sorted((info for info in entries if needle and needle in info.title), key=lambda i: len(i.title))
        if found:
            return found[0]
    return None


def scan_checkpoints(paths: ModelPaths, hashes: HashCache) -> list[Any]:
    """Every checkpoint, in A1111's order; titles carry a hash only where one is cached."""
    return [describe_checkpoint(path, paths, hashes) for path in checkpoint_files(paths)]


# ---------------------------------------------------------------------------
# VAEs, networks, embeddings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VaeFile:
    """One /sdapi/v1/sd-vae entry: `model_name` is the file name, the `sd_vae` option value."""

    model_name: str
    filename: str

    def api_item(self) -> dict[str, str]:
        return {"model_name": self.model_name, "filename": self.filename}


def scan_vaes(paths: ModelPaths) -> list[VaeFile]:
    """A1111's VAE list: keyed by file name (a later file with the same name wins), sorted."""
    candidates: list[Path] = []
    for folder in paths.ckpt_dirs:
        found = walk_files(folder, VAE_EXTENSIONS)
        candidates += [p for p in found if p.name.lower().endswith(VAE_SUFFIXES_NEAR_CHECKPOINTS)]
    for folder in paths.vae_dirs:
        candidates += list(walk_files(folder, VAE_EXTENSIONS))
    by_name = {path.name: str(path) for path in candidates}
    return [VaeFile(name, by_name[name]) for name in sorted(by_name, key=natural_sort_key)]


def network_files(paths: ModelPaths) -> list[Path]:
    """LoRA / LyCORIS files, Lora folder first."""
    return [path for folder in paths.lora_dirs for path in walk_files(folder, NETWORK_EXTENSIONS)]


def embedding_files(paths: ModelPaths) -> list[Path]:
    """Textual-inversion files (.pt, .bin, .safetensors, and images that may carry one; empty
    files skipped as A1111 does)."""
    found = []
    for folder in paths.embeddings_dirs:
        found += [path for path in walk_files(folder, EMBEDDING_EXTENSIONS) if path.stat().st_size > 0]
    return found

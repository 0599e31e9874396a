"""Where each of A1111's model folders is on this server: the models dir, or the flag that moves it.

A1111 keeps one folder per family under `models/` and lets a `--*-models-path` flag move
some of them; the registry names folders by A1111's folder name and this module turns that
name into a path, so the registry stays pure data and tests point folders anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

# A1111 folder name -> the /cmd-flags key (argparse dest) that overrides it.
FOLDER_FLAGS: Mapping[str, str] = MappingProxyType({
    "ESRGAN": "esrgan_models_path",
    "RealESRGAN": "realesrgan_models_path",
    "SwinIR": "swinir_models_path",
    "ScuNET": "scunet_models_path",
    "DAT": "dat_models_path",
    "GFPGAN": "gfpgan_models_path",
    "Codeformer": "codeformer_models_path",
    "CLIP": "clip_models_path",  # A1111 passes it to clip.load(download_root=...)
})


@dataclass(frozen=True)
class WeightFolders:
    """Folder name -> directory: `overrides` first, else <models_dir>/<name>."""

    models_dir: Path
    overrides: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_settings(cls, settings: Any) -> WeightFolders:
        """From Settings: the models dir and the folder flags in /cmd-flags; checkpoints go
        to <models>/Stable-diffusion as A1111's download does."""
        return cls.under(Path(settings.models_dir), settings.cmd_flags)

    @classmethod
    def under(cls, models_dir: Path, cmd_flags: Mapping[str, Any] | None = None) -> WeightFolders:
        flags = cmd_flags or {}
        overrides = {name: Path(flags[flag]) for name, flag in FOLDER_FLAGS.items() if flags.get(flag)}
        return cls(Path(models_dir), MappingProxyType(overrides))

    def folder(self, name: str) -> Path:
        return self.overrides.get(name, self.models_dir / name)

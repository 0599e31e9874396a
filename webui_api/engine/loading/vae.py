"""Which VAE a job decodes with (A1111's `sd_vae` rules) and loading a VAE file.

Resolution order, as A1111's `sd_vae.resolve_vae`:
  1. --vae-path, whatever else is set;
  2. with `sd_vae_overrides_per_model_preferences` (default on) and `sd_vae` naming a file or
     "None": that choice;
  3. the "vae" key of `<checkpoint>.json` (A1111's per-model user metadata);
  4. a VAE file whose name starts with the checkpoint's name (`model.vae.safetensors`
     beside `model.safetensors`, or `model.safetensors` in models/VAE);
  5. `sd_vae` again; "Automatic" ends at the checkpoint's own (baked-in) VAE.
A name that is not in the scanned VAE list is refused with a 404 (A1111 falls back silently
to the baked VAE): names never become paths.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui_api.engine.loading.discovery import VaeFile
from webui_api.errors import NotFound

log = logging.getLogger(__name__)

AUTOMATIC = ("Automatic", "auto")
NONE = "None"
SDXL_FAMILIES = ("sdxl", "sdxl-refiner")


@dataclass(frozen=True)
class VaeChoice:
    """The resolved VAE: a file, or None for the checkpoint's own; `source` is for logs."""

    file: VaeFile | None
    source: str


class UnknownVae(NotFound):
    """An `sd_vae` value that names no file in the VAE folders."""

    error_name = "RuntimeError"

    def __init__(self, name: str, available: Sequence[VaeFile]) -> None:
        names = ", ".join(v.model_name for v in available) or "none"
        super().__init__(
            f"VAE {name!r} not found; sd_vae must be 'Automatic', 'None' or one of: {names}",
            errors=f"VAE {name!r} not found",
        )


def resolve_vae(
    option: str | None,
    checkpoint_file: str,
    vaes: Sequence[VaeFile],
    vae_path: Path | None = None,
    overrides_per_model: bool = True,
) -> VaeChoice:
    """A1111's choice of VAE for one job; see the module docstring for the order."""
    if vae_path is not None:
        return VaeChoice(VaeFile(vae_path.name, str(vae_path)), "from --vae-path")
    setting = option or "Automatic"
    automatic = setting in AUTOMATIC
    if overrides_per_model and not automatic:
        return _from_setting(setting, vaes)
    for choice in (_from_user_metadata(checkpoint_file, vaes), _near_checkpoint(checkpoint_file, vaes)):
        if choice is not None:
            return choice
    return VaeChoice(None, "checkpoint's own") if automatic else _from_setting(setting, vaes)


def _from_setting(setting: str, vaes: Sequence[VaeFile]) -> VaeChoice:
    if setting == NONE:
        return VaeChoice(None, "sd_vae is None")
    found = next((v for v in vaes if v.model_name == setting), None)
    if found is None:  # A1111: "Couldn't find VAE named X; using None instead", and the job runs
        log.warning("Couldn't find VAE named %s; using None instead", setting)
        return VaeChoice(None, "sd_vae names no VAE file")
    return VaeChoice(found, "specified in settings")


def _from_user_metadata(checkpoint_file: str, vaes: Sequence[VaeFile]) -> VaeChoice | None:
    """`<checkpoint>.json` {"vae": "..."}: A1111's per-checkpoint preference."""
    metadata_path = Path(checkpoint_file).with_suffix(".json")
    if not metadata_path.is_file():
        return None
    try:
        wanted = json.loads(metadata_path.read_text(encoding="utf8")).get("vae")
    except (OSError, ValueError, AttributeError) as err:
        log.warning("Ignoring unreadable checkpoint metadata %s: %s", metadata_path, err)
        return None
    if wanted in (None, *AUTOMATIC):
        return None
    if wanted == NONE:
        return VaeChoice(None, "user metadata says None")
    found = next((v for v in vaes if v.model_name == wanted), None)
    return VaeChoice(found, "from user metadata") if found else None


def _near_checkpoint(checkpoint_file: str, vaes: Sequence[VaeFile]) -> VaeChoice | None:
    """A1111: the first VAE whose file name starts with the checkpoint's name up to its last dot."""
    stem = Path(checkpoint_file).name.rsplit(".", 1)[0]
    found = next((v for v in vaes if Path(v.filename).name.startswith(stem)), None)
    return VaeChoice(found, "found near the checkpoint") if found else None


def vae_config_for(family: str) -> str:
    """The bundled VAE architecture a family decodes with (same network, different scale)."""
    return "vae-sdxl" if family in SDXL_FAMILIES else "vae-sd"


def load_vae_file(vae: VaeFile, family: str, device: Any, dtype: Any, allow_unsafe_pickle: bool) -> Any:
    """A VAE file as an AutoencoderKL on `device` in `dtype`; UnusableModelFile if it is not one."""
    from webui_api.engine.loading.builder import build_vae
    from webui_api.engine.loading.checkpoint import place_module
    from webui_api.engine.loading.files import read_state_dict

    path = Path(vae.filename)
    module = build_vae(path, read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle), vae_config_for(family))
    log.info("Loaded VAE %s", path)
    return place_module(module, device, dtype)

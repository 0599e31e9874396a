"""Diffusers-format model folders (`model_index.json` + unet/ vae/ text_encoder*/ subfolders).

A1111 does not list these; we do, as a checkpoint named by the folder's path. They are read
with this package's own loader, not diffusers' `from_pretrained`: each component's
`config.json` and weights (.safetensors, sharded or not; pickled `.bin` only as plain tensors)
are read from the folder, checked against the network built from that config on the `meta`
device, and assigned into it, exactly like single-file checkpoints. Tokenizers are the
bundled ones (the vocabulary is the same for every SD text encoder).

The architecture follows from the components: two text encoders = SDXL, only the second =
SDXL refiner, one of width 1024 = SD2, else SD1; a 9-channel UNet = inpainting; the
scheduler config's `prediction_type` gives v-prediction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from webui_api.engine.loading import ldm_keys
from webui_api.engine.loading.architectures import ARCHITECTURES, Architecture, Detection, inpainting, v_prediction
from webui_api.engine.loading.builder import Component, PreparedCheckpoint, check_state, expected_shapes
from webui_api.engine.loading.files import UnusableModelFile, read_state_dict

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
WEIGHT_NAMES = {  # component subfolder -> its weight file's stem
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
}


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / MODEL_INDEX).is_file()


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnusableModelFile(path.parent, f"{path.name} is unreadable ({err})") from err
    if not isinstance(data, dict):
        raise UnusableModelFile(path.parent, f"{path.name} is not a JSON object")
    return data


def _weight_files(folder: Path, stem: str) -> list[Path]:
    """The component's weight files: one file or the shards its index lists; .safetensors
    preferred, the fp16 variant when only that exists, pickled .bin last."""
    for suffix in (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin"):
        single = folder / f"{stem}{suffix}"
        if single.is_file():
            return [single]
        index = folder / f"{stem}{suffix}.index.json"
        if index.is_file():
            shards = sorted(set(_json(index).get("weight_map", {}).values()))
            return [folder / shard for shard in shards]
    raise UnusableModelFile(folder, f"no weights named {stem}.safetensors (or .bin, sharded or fp16) in {folder.name}/")


def _component_state(folder: Path, stem: str, allow_unsafe_pickle: bool) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder, stem):
        state.update(read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle))
    return state


def _empty_module(slot: str, config: dict[str, Any]) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        if slot == "unet":
            return UNet2DConditionModel.from_config(config)
        if slot == "vae":
            return AutoencoderKL.from_config(config)
        projected = "CLIPTextModelWithProjection" in config.get("architectures", [])
        kind = CLIPTextModelWithProjection if projected else CLIPTextModel
        return kind(CLIPTextConfig.from_dict(config))


def _component(root: Path, slot: str, allow_unsafe_pickle: bool) -> Component:
    folder = root / slot
    config = _json(folder / "config.json")
    module = _empty_module(slot, config)
    state = _component_state(folder, WEIGHT_NAMES[slot], allow_unsafe_pickle)
    wanted = expected_shapes(module)
    if slot.startswith("text_encoder"):
        canonical = {ldm_keys.canonical_text_key(k): v for k, v in state.items() if not k.endswith("position_ids")}
        state = {
            k: canonical[ldm_keys.canonical_text_key(k)] for k in wanted if ldm_keys.canonical_text_key(k) in canonical
        }
    check_state(root, state, wanted, slot)
    return Component(module, state)


def _architecture(root: Path, index: dict[str, Any], components: dict[str, Component]) -> Detection:
    text, text_2 = components.get("text_encoder"), components.get("text_encoder_2")
    if text is not None and text_2 is not None:
        arch: Architecture = ARCHITECTURES["sdxl"]
    elif text_2 is not None:
        arch = ARCHITECTURES["sdxl-refiner"]
    elif text is not None:
        text_config: Any = text.module.config  # a transformers config, attributes by model
        width = int(text_config.hidden_size)
        arch = ARCHITECTURES["sd2" if width == 1024 else "sd1"]
    else:
        raise UnusableModelFile(
            root, f"{index.get('_class_name', 'this pipeline')} has no CLIP text encoder this server can use"
        )
    unet_config: Any = components["unet"].module.config  # a diffusers config, attributes by model
    if int(unet_config.in_channels) == 9:
        arch = inpainting(arch)
    scheduler = root / "scheduler" / "scheduler_config.json"
    if scheduler.is_file() and _json(scheduler).get("prediction_type") == "v_prediction":
        arch = v_prediction(arch)
    return Detection(arch)


def prepare_folder(root: Path, allow_unsafe_pickle: bool) -> tuple[Detection, PreparedCheckpoint]:
    """Read and check every component of a diffusers folder (nothing is built yet)."""
    index = _json(root / MODEL_INDEX)
    slots = [slot for slot in WEIGHT_NAMES if isinstance(index.get(slot), list) and index[slot][0] is not None]
    missing = {"unet", "vae"} - set(slots)
    if missing:
        raise UnusableModelFile(root, f"{MODEL_INDEX} lists no {sorted(missing)}; expected a Stable Diffusion pipeline")
    components = {slot: _component(root, slot, allow_unsafe_pickle) for slot in slots}
    detection = _architecture(root, index, components)
    text = {slot: c for slot, c in components.items() if slot.startswith("text_encoder")}
    return detection, PreparedCheckpoint(unet=components["unet"], vae=components["vae"], text=text)


def load_folder(info: Any, options: Any, before_build: Callable[[], None]) -> Any:
    """A diffusers folder as a LoadedModel (see `checkpoint.load_checkpoint` for the phases)."""
    from webui_api.engine.loading.checkpoint import assemble

    detection, prepared = prepare_folder(Path(info.filename), options.allow_unsafe_pickle)
    before_build()
    model = assemble(info, detection, prepared, options)
    model.vae_scale_factor = float(model.vae.config.scaling_factor)
    log.info("Loaded diffusers folder %s as %s", info.filename, model.architecture)
    return model

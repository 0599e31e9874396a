"""Flux.1 diffusers folders (`model_index.json` of a FluxPipeline: transformer/, vae/,
text_encoder/ (CLIP-L), text_encoder_2/ (T5), tokenizer_2/).

Read like the SD folders (diffusers_folder.py): each component's config.json and weights are
checked against the module built from that config on the meta device, then assigned. The T5
tokenizer comes from the folder's tokenizer_2/ (such folders carry it), else from the models
folder (forge_modules.load_t5_tokenizer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from webui_api.engine.loading.builder import Component
from webui_api.engine.loading.diffusers_folder import MODEL_INDEX, _json
from webui_api.engine.loading.files import UnusableModelFile
from webui_api.engine.loading.flow_parts import folder_component

log = logging.getLogger(__name__)

_PARTS = {  # subfolder -> weight file stem
    "transformer": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
}


def is_flux_folder(path: Path) -> bool:
    index = path / MODEL_INDEX
    return index.is_file() and str(_json(index).get("_class_name", "")).startswith("Flux")


def _empty(slot: str, config: dict[str, Any]) -> torch.nn.Module:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        if slot == "transformer":
            return FluxTransformer2DModel.from_config(config)
        if slot == "vae":
            return AutoencoderKL.from_config(config)
        if slot == "text_encoder":
            return CLIPTextModel(CLIPTextConfig.from_dict(config))
        return T5EncoderModel(T5Config.from_dict(config))


def _part(root: Path, slot: str, allow_unsafe_pickle: bool) -> Component:
    folder = root / slot
    if not folder.is_dir():
        raise UnusableModelFile(root, f"this Flux pipeline folder has no {slot}/")
    module = _empty(slot, _json(folder / "config.json"))
    return folder_component(root, slot, module, _PARTS[slot], allow_unsafe_pickle, t5_slot="text_encoder_2")


def load_flux_folder(info: Any, options: Any, t5_tokenizer: Callable[[], Any], before_build: Callable[[], None]) -> Any:
    """A FluxPipeline folder as a LoadedModel."""
    # transformers exports it lazily (an alias of T5Tokenizer in 5.x); its type hints do not list it
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    from webui_api.engine.loading.flux_checkpoint import FluxComponents, assemble_flux

    root = Path(info.filename)
    parts = {slot: _part(root, slot, options.allow_unsafe_pickle) for slot in _PARTS}
    tokenizer_dir = root / "tokenizer_2"
    if tokenizer_dir.is_dir():
        tokenizer = T5TokenizerFast.from_pretrained(str(tokenizer_dir), local_files_only=True)
    else:
        tokenizer = t5_tokenizer()
    transformer_config: Any = parts["transformer"].module.config  # a diffusers FrozenDict
    config = dict(transformer_config)
    components = FluxComponents(
        parts["transformer"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"], config,
        {slot: str(root) for slot in _PARTS},
    )
    before_build()
    model = assemble_flux(info, components, options, tokenizer)
    model.vae_scale_factor = float(model.vae.config.scaling_factor)
    model.vae_shift_factor = float(model.vae.config.shift_factor or 0.0)
    log.info("Loaded Flux diffusers folder %s as %s", info.filename, model.architecture)
    return model

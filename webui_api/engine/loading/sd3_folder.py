"""SD3 / SD3.5 diffusers folders (`model_index.json` of a StableDiffusion3Pipeline: transformer/,
vae/, text_encoder/ (CLIP-L), text_encoder_2/ (CLIP-G), optional text_encoder_3/ (T5) with
tokenizer_3/).

Read like the Flux folders: each component's config.json and weights are checked against the
module built from that config on the meta device, then assigned. A folder saved without T5
(`text_encoder_3: [null, null]` in the index, as diffusers writes it) runs with zeros for T5.
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
    "text_encoder_3": "model",
}
OPTIONAL = ("text_encoder_3",)


def is_sd3_folder(path: Path) -> bool:
    index = path / MODEL_INDEX
    return index.is_file() and str(_json(index).get("_class_name", "")).startswith("StableDiffusion3")


def _empty(slot: str, config: dict[str, Any]) -> torch.nn.Module:
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"):
        if slot == "transformer":
            return SD3Transformer2DModel.from_config(config)
        if slot == "vae":
            return AutoencoderKL.from_config(config)
        if slot == "text_encoder_3":
            return T5EncoderModel(T5Config.from_dict(config))
        return CLIPTextModelWithProjection(CLIPTextConfig.from_dict(config))


def _part(root: Path, slot: str, allow_unsafe_pickle: bool) -> Component | None:
    folder = root / slot
    if not folder.is_dir():
        if slot in OPTIONAL:
            return None
        raise UnusableModelFile(root, f"this SD3 pipeline folder has no {slot}/")
    module = _empty(slot, _json(folder / "config.json"))
    return folder_component(root, slot, module, _PARTS[slot], allow_unsafe_pickle, t5_slot="text_encoder_3")


def load_sd3_folder(info: Any, options: Any, t5_tokenizer: Callable[[], Any], before_build: Callable[[], None]) -> Any:
    """A StableDiffusion3Pipeline folder as a LoadedModel (T5 tokenizer from tokenizer_3/, else
    from the models folder)."""
    # transformers exports it lazily (an alias of T5Tokenizer in 5.x); its type hints do not list it
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    from webui_api.engine.loading.sd3_checkpoint import SD3Components, assemble_sd3

    root = Path(info.filename)
    parts = {slot: _part(root, slot, options.allow_unsafe_pickle) for slot in _PARTS}
    t5 = parts["text_encoder_3"]
    tokenizer = None
    if t5 is not None:
        folder = root / "tokenizer_3"
        has_files = (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()
        tokenizer = T5TokenizerFast.from_pretrained(str(folder), local_files_only=True) if has_files else t5_tokenizer()
    required = {slot: part for slot, part in parts.items() if part is not None}
    transformer = required["transformer"]
    transformer_config: Any = transformer.module.config  # a diffusers FrozenDict
    components = SD3Components(
        transformer, required["vae"], required["text_encoder"], required["text_encoder_2"], t5,
        dict(transformer_config), {slot: str(root) for slot in required},
    )
    before_build()
    model = assemble_sd3(info, components, options, tokenizer)
    log.info("Loaded SD3 diffusers folder %s as %s", info.filename, model.architecture)
    return model

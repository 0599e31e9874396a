"""LoRA for Flux.1: BFL's module names and how a delta on one splits into diffusers' modules.

Key formats and merging are shared with SD3 (flow_lora): Kohya `lora_unet_double_blocks_0_img_attn_qkv`,
BFL `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`, diffusers
`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`; text encoders `lora_te1_` (CLIP-L)
and `lora_te3_` (T5, sd-scripts' name for Flux's T5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from webui_api.engine.families.flow_lora import FamilyLoraKeys, apply_flow_networks
from webui_api.engine.loading import flux_keys
from webui_api.engine.networks import LoadedNetwork, NetworkPatch
from webui_api.errors import BadRequest

_LINEAR_STEMS = (
    "img_in", "txt_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer", "vector_in.out_layer",
    "guidance_in.in_layer", "guidance_in.out_layer", "final_layer.linear", "final_layer.adaLN_modulation.1",
)
_DOUBLE_STEMS = (
    "img_mod.lin", "txt_mod.lin", "img_attn.qkv", "txt_attn.qkv", "img_attn.proj", "txt_attn.proj",
    "img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2",
)
_SINGLE_STEMS = ("modulation.lin", "linear1", "linear2")
TEXT_SLOTS = (("text_encoder", ("lora_te1_", "lora_te_"), True), ("text_encoder_2", ("lora_te3_",), False))


def bfl_linear_stems(config: Mapping[str, Any]) -> list[str]:
    """Every BFL Linear module name of a transformer with this config."""
    stems = list(_LINEAR_STEMS)
    stems += [f"double_blocks.{i}.{s}" for i in range(int(config["num_layers"])) for s in _DOUBLE_STEMS]
    stems += [f"single_blocks.{i}.{s}" for i in range(int(config["num_single_layers"])) for s in _SINGLE_STEMS]
    return stems


def flux_lora_keys(transformer: torch.nn.Module) -> FamilyLoraKeys:
    config: Any = transformer.config  # a diffusers config, attributes by name
    hidden = int(config.num_attention_heads) * int(config.attention_head_dim)

    def to_diffusers(stem: str, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        try:
            mapped = flux_keys.bfl_to_diffusers({stem + ".weight": delta}, hidden)
        except flux_keys.UnmappedKey as err:
            raise BadRequest(f"LoRA targets unknown Flux module {stem!r}") from err
        return {key[: -len(".weight")]: value for key, value in mapped.items()}

    return FamilyLoraKeys("Flux", bfl_linear_stems(config), flux_keys.is_transformer_key, to_diffusers, TEXT_SLOTS)


def apply_flux_networks(model: Any, loaded: Sequence[LoadedNetwork]) -> NetworkPatch:
    """Merge every network into a Flux model (transformer: unet weight; encoders: te weight)."""
    return apply_flow_networks(model, loaded, flux_lora_keys(model.unet))

"""LoRA for SD3 / SD3.5: Stability's MMDiT module names and how a delta on one splits into
diffusers' `SD3Transformer2DModel` modules (the loader's own key map, sd3_keys).

Key formats (merging shared with Flux in flow_lora): Kohya / sd-scripts
`lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight`, MMDiT names
`diffusion_model.joint_blocks.0.context_block.attn.qkv.lora_A.weight`, diffusers / PEFT
`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`; text encoders `lora_te1_` (CLIP-L),
`lora_te2_` (CLIP-G), `lora_te3_` (T5), as sd-scripts names them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from webui_api.engine.families.flow_lora import FamilyLoraKeys, apply_flow_networks
from webui_api.engine.loading import sd3_keys
from webui_api.engine.networks import LoadedNetwork, NetworkPatch
from webui_api.errors import BadRequest

_TOP_STEMS = ("t_embedder.mlp.0", "t_embedder.mlp.2", "y_embedder.mlp.0", "y_embedder.mlp.2", "context_embedder",
              "final_layer.linear", "final_layer.adaLN_modulation.1")
_STREAM_STEMS = ("adaLN_modulation.1", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_PRE_ONLY_STEMS = ("adaLN_modulation.1", "attn.qkv")  # the last block's context stream
_DUAL_STEMS = ("attn2.qkv", "attn2.proj")
TEXT_SLOTS = (
    ("text_encoder", ("lora_te1_", "lora_te_"), True),
    ("text_encoder_2", ("lora_te2_",), True),
    ("text_encoder_3", ("lora_te3_",), False),
)


def mmdit_linear_stems(config: Mapping[str, Any]) -> list[str]:
    """Every MMDiT Linear module name of a transformer with this (diffusers) config."""
    depth = int(config["num_layers"])
    dual = set(config.get("dual_attention_layers") or ())
    stems = list(_TOP_STEMS)
    for i in range(depth):
        stems += [f"joint_blocks.{i}.x_block.{s}" for s in _STREAM_STEMS]
        stems += [f"joint_blocks.{i}.x_block.{s}" for s in _DUAL_STEMS if i in dual]
        context = _PRE_ONLY_STEMS if i == depth - 1 else _STREAM_STEMS
        stems += [f"joint_blocks.{i}.context_block.{s}" for s in context]
    return stems


def sd3_lora_keys(transformer: torch.nn.Module) -> FamilyLoraKeys:
    config: Any = transformer.config
    depth = int(config.num_layers)

    def to_diffusers(stem: str, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        try:
            mapped = sd3_keys.mmdit_to_diffusers({stem + ".weight": delta}, depth)
        except sd3_keys.UnmappedKey as err:
            raise BadRequest(f"LoRA targets unknown SD3 module {stem!r}") from err
        return {key[: -len(".weight")]: value for key, value in mapped.items()}

    return FamilyLoraKeys("SD3", mmdit_linear_stems(config), sd3_keys.is_transformer_key, to_diffusers, TEXT_SLOTS)


def apply_sd3_networks(model: Any, loaded: Sequence[LoadedNetwork]) -> NetworkPatch:
    """Merge every network into an SD3 model (transformer: unet weight; encoders: te weight)."""
    return apply_flow_networks(model, loaded, sd3_lora_keys(model.unet))

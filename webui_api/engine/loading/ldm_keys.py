"""Key names: the original (LDM / SGM, "A1111") checkpoint layout <-> diffusers / transformers.

A single-file checkpoint stores one state dict for the whole model under the names of the
original CompVis / Stability code (`model.diffusion_model.input_blocks.1.0.in_layers.0.weight`);
the networks we run are diffusers / transformers modules with their own names
(`down_blocks.0.resnets.0.norm1.weight`). Every function here maps ONE diffusers-side key to
its original-side key. Loading inverts that table (built from the target module's own keys),
and the tests use it forwards to write checkpoints in the original layout, so both directions
come from the same rules. The rules are written from the two architectures' structure:

UNet (openaimodel.UNetModel): `input_blocks` is a flat list: block 0 is conv_in, then per
level `layers_per_block` blocks [ResBlock, SpatialTransformer?] and, except on the last
level, one Downsample block. `output_blocks` has `layers_per_block + 1` blocks per level,
the last one of each level (except the last level) ending in an Upsample at position 1
(no attention at that level) or 2. `middle_block` is [ResBlock, SpatialTransformer, ResBlock].

VAE: `down.{i}.block.{j}` / `down.{i}.downsample`, `mid.block_1|attn_1|block_2`, and the
decoder's `up.{i}` numbered from the lowest resolution, i.e. reversed against diffusers'
`up_blocks`. Its mid attention stores q/k/v/proj as 1x1 convolutions (diffusers: linear).

OpenCLIP text towers (SD2, SDXL's second encoder, the refiner) keep q, k, v fused in one
`in_proj_weight` and the projection as a (width, dim) matrix; they are converted as a whole
by `openclip_to_hf` / `hf_to_openclip` rather than key by key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# diffusers ResnetBlock2D child -> openaimodel ResBlock child
_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_RESNET_PARTS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP_LEVEL = {"conv_norm_out": "norm_out"}


class KeyMappingError(ValueError):
    """A diffusers key the rules do not cover: the architecture config and the rules disagree."""


@dataclass(frozen=True)
class UNetLayout:
    """What the key rules need to know about a UNet: its depth and which levels attend."""

    layers_per_block: int
    down_has_attention: tuple[bool, ...]
    up_has_attention: tuple[bool, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UNetLayout:
        return cls(
            layers_per_block=int(config["layers_per_block"]),
            down_has_attention=tuple("CrossAttn" in kind for kind in config["down_block_types"]),
            up_has_attention=tuple("CrossAttn" in kind for kind in config["up_block_types"]),
        )


def _split(key: str, pattern: str) -> re.Match[str] | None:
    return re.fullmatch(pattern, key)


def _top_level(key: str, table: Mapping[str, str]) -> str | None:
    """`table` maps a module path to another; the key is that path plus ".<param>"."""
    for source, target in table.items():
        if key.startswith(source + "."):
            return target + key[len(source) :]
    return None


def _resnet_rest(rest: str, parts: Mapping[str, str]) -> str:
    module, _, param = rest.rpartition(".")
    if module not in parts:
        raise KeyMappingError(f"unknown resnet child {module!r}")
    return f"{parts[module]}.{param}"


def unet_key_to_ldm(key: str, layout: UNetLayout) -> str:
    """One diffusers UNet2DConditionModel key -> its `model.diffusion_model.*` name."""
    mapped = _top_level(key, _UNET_TOP_LEVEL) or _unet_block_key(key, layout)
    if mapped is None:
        raise KeyMappingError(f"no LDM name rule for UNet key {key!r}")
    return UNET_PREFIX + mapped


def _unet_block_key(key: str, layout: UNetLayout) -> str | None:
    per_down = layout.layers_per_block + 1  # resnets plus the downsample slot
    if m := _split(key, r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)"):
        index = 1 + int(m[1]) * per_down + int(m[3])
        return _unet_inner(index, "input_blocks", m[2], m[4])
    if m := _split(key, r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)"):
        return f"input_blocks.{1 + int(m[1]) * per_down + layout.layers_per_block}.0.op.{m[2]}"
    if m := _split(key, r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)"):
        slot = 1 if m[1] == "attentions" else 2 * int(m[2])
        rest = m[3] if m[1] == "attentions" else _resnet_rest(m[3], _UNET_RESNET_PARTS)
        return f"middle_block.{slot}.{rest}"
    if m := _split(key, r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)"):
        index = int(m[1]) * per_down + int(m[3])
        return _unet_inner(index, "output_blocks", m[2], m[4])
    if m := _split(key, r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)"):
        level = int(m[1])
        slot = 2 if layout.up_has_attention[level] else 1
        return f"output_blocks.{level * per_down + layout.layers_per_block}.{slot}.conv.{m[2]}"
    return None


def _unet_inner(index: int, blocks: str, kind: str, rest: str) -> str:
    if kind == "attentions":
        return f"{blocks}.{index}.1.{rest}"  # SpatialTransformer children share diffusers' names
    return f"{blocks}.{index}.0.{_resnet_rest(rest, _UNET_RESNET_PARTS)}"


def vae_key_to_ldm(key: str, levels: int) -> str:
    """One diffusers AutoencoderKL key -> its `first_stage_model.*` name."""
    mapped = _vae_key(key, levels)
    if mapped is None:
        raise KeyMappingError(f"no LDM name rule for VAE key {key!r}")
    return VAE_PREFIX + mapped


def _vae_key(key: str, levels: int) -> str | None:
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    if m := _split(key, r"(encoder|decoder)\.(conv_in|conv_out)\.(.+)"):
        return key
    if m := _split(key, r"(encoder|decoder)\.conv_norm_out\.(.+)"):
        return f"{m[1]}.norm_out.{m[2]}"
    if m := _split(key, r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)"):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_resnet_rest(m[3], _VAE_RESNET_PARTS)}"
    if m := _split(key, r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)"):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := _split(key, r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)"):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_resnet_rest(m[3], _VAE_RESNET_PARTS)}"
    if m := _split(key, r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)"):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := _split(key, r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)"):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet_rest(m[3], _VAE_RESNET_PARTS)}"
    if m := _split(key, r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)"):
        if m[2] not in _VAE_ATTENTION_PARTS:
            return None
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION_PARTS[m[2]]}.{m[3]}"
    return None


# diffusers < 0.15 named the VAE attention children differently (old diffusers-layout files)
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
VAE_DIFFUSERS_MARKERS = (".down_blocks.", ".up_blocks.", ".mid_block.")


def is_diffusers_vae(keys: Iterable[str]) -> bool:
    """Whether a VAE file uses diffusers' AutoencoderKL names (encoder.down_blocks.0...)."""
    return any(marker in key for key in keys for marker in VAE_DIFFUSERS_MARKERS)


def diffusers_vae_to_ldm(state: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers-layout VAE state dict renamed to the original layout (no prefix), so one
    loader serves both. Legacy attention names are accepted; keys no rule covers (none in a
    well-formed file) are left out and the completeness check names what is then missing."""
    levels = 1 + max((int(m[1]) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))), default=-1)
    out: dict[str, Any] = {}
    for key, value in state.items():
        try:
            mapped = _vae_key(_modern_attention_key(key), levels)
        except KeyMappingError:
            mapped = None
        if mapped is not None:
            out[mapped] = value
    return out


def _modern_attention_key(key: str) -> str:
    m = _split(key, r"(.+\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)")
    return f"{m[1]}.{_LEGACY_VAE_ATTENTION[m[2]]}.{m[3]}" if m else key


def canonical_text_key(key: str) -> str:
    """A transformers CLIP text key in the layout checkpoints use ("text_model.embeddings...").
    transformers 5's CLIPTextModel drops the "text_model." level from its own state dict
    (CLIPTextModelWithProjection keeps it); files always carry it."""
    if key.startswith("text_model.") or key.startswith("text_projection."):
        return key
    return "text_model." + key


def clip_key_to_ldm(key: str, prefix: str) -> str:
    """A transformers CLIPTextModel key -> the checkpoint's name: the canonical key under
    `prefix` (e.g. "cond_stage_model.transformer.")."""
    return prefix + canonical_text_key(key)


def legacy_clip_key(key: str, prefix: str) -> str:
    """Old SD1 checkpoints omit "text_model." after the prefix (transformers < 4.x layout);
    A1111 inserts it on load, and so do we."""
    rest = key[len(prefix) :]
    if key.startswith(prefix) and rest.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
        return prefix + "text_model." + rest
    return key


# ---------------------------------------------------------------------------
# OpenCLIP text towers
# ---------------------------------------------------------------------------

_OPENCLIP_LAYER_PARTS = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_LAYER = "text_model.encoder.layers"


def openclip_layer_count(state: Mapping[str, Any], prefix: str) -> int:
    """How many residual blocks the checkpoint's OpenCLIP tower has."""
    pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    found = {int(m[1]) for key in state if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def openclip_to_hf(
    state: Mapping[str, torch.Tensor], prefix: str, layers: int, with_projection: bool
) -> dict[str, torch.Tensor]:
    """The first `layers` blocks of an OpenCLIP text tower as CLIPTextModel(WithProjection)
    keys. q/k/v are split out of the fused in_proj, the projection is transposed. Missing
    source keys raise KeyError naming them."""
    out = {
        "text_model.embeddings.token_embedding.weight": state[prefix + "token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state[prefix + "positional_embedding"],
        "text_model.final_layer_norm.weight": state[prefix + "ln_final.weight"],
        "text_model.final_layer_norm.bias": state[prefix + "ln_final.bias"],
    }
    for layer in range(layers):
        out.update(_openclip_layer_to_hf(state, f"{prefix}transformer.resblocks.{layer}.", f"{_HF_LAYER}.{layer}."))
    if with_projection:
        out["text_projection.weight"] = state[prefix + "text_projection"].t().contiguous()
    return out


def _openclip_layer_to_hf(state: Mapping[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        q, k, v = state[f"{source}attn.in_proj_{kind}"].chunk(3, dim=0)
        for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            out[f"{target}self_attn.{name}.{kind}"] = part.contiguous()
        for hf_part, oc_part in _OPENCLIP_LAYER_PARTS.items():
            out[f"{target}{hf_part}.{kind}"] = state[f"{source}{oc_part}.{kind}"]
    return out


def hf_to_openclip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The inverse of `openclip_to_hf` (used to write original-layout test checkpoints)."""
    state = {canonical_text_key(key): value for key, value in state.items()}
    out = {
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
    }
    layers = {int(m[1]) for key in state if (m := re.match(re.escape(_HF_LAYER) + r"\.(\d+)\.", key))}
    for layer in sorted(layers):
        source, target = f"{_HF_LAYER}.{layer}.", f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            fused = [state[f"{source}self_attn.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj")]
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(fused, dim=0)
            for hf_part, oc_part in _OPENCLIP_LAYER_PARTS.items():
                out[f"{target}{oc_part}.{kind}"] = state[f"{source}{hf_part}.{kind}"]
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state["text_projection.weight"].t().contiguous()
    return out

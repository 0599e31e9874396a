"""SD3 / SD3.5 single files: which layout a file uses, the MMDiT's sizes, and our key map from
Stability's MMDiT names (`joint_blocks.*`, `x_embedder`, `final_layer`) to diffusers'
`SD3Transformer2DModel`.

Files people download (SD3 medium, SD3.5 medium / large / large-turbo) keep the MMDiT under
`model.diffusion_model.`, the 16-channel VAE under `first_stage_model.`, and may pack the text
encoders under `text_encoders.clip_l.`, `text_encoders.clip_g.` and `text_encoders.t5xxl.`.

Every size is read from the tensors: depth by counting `joint_blocks`, the width from the patch
embedding, the head width from the qk-norm scales where the file has them and else MMDiT's fixed
64 (heads = width / head width, as Forge's and ComfyUI's MMDiT read it, never from the block count:
a file may carry fewer blocks than heads), SD3.5 medium's MMDiT-X dual attention from the
blocks that carry `attn2`, and qk-norm from `ln_q`.
No torch import at module import; functions that move tensors take them as arguments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webui_api.engine.loading.flux_keys import block_count, need_shape

Shapes = Mapping[str, tuple[int, ...]]

PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
}
MARKER = "joint_blocks.0.context_block.attn.qkv.weight"
_ROOTS = ("pos_embed", "x_embedder.", "t_embedder.", "y_embedder.", "context_embedder.", "joint_blocks.",
          "final_layer.")


@dataclass(frozen=True)
class SD3Layout:
    """Where the parts of an SD3 file live (None: the file lacks that part)."""

    transformer_prefix: str
    vae_prefix: str | None
    text_prefixes: dict[str, str]  # kind ("clip_l", "clip_g", "t5xxl") -> prefix, for the packed ones


def is_sd3(shapes: Shapes) -> bool:
    """True for an MMDiT (SD3/SD3.5), bare or under `model.diffusion_model.`."""
    return MARKER in shapes or PREFIX + MARKER in shapes


def sd3_layout(shapes: Shapes) -> SD3Layout:
    prefix = PREFIX if PREFIX + MARKER in shapes else ""
    packed = {kind: p for kind, p in TEXT_PREFIXES.items() if any(key.startswith(p) for key in shapes)}
    vae = VAE_PREFIX if VAE_PREFIX + "decoder.conv_in.weight" in shapes else None
    return SD3Layout(prefix, vae, packed)


def is_transformer_key(key: str) -> bool:
    return key.startswith(_ROOTS)


def dual_attention_layers(shapes: Shapes) -> tuple[int, ...]:
    """SD3.5 medium's MMDiT-X blocks: those with a second image attention (`x_block.attn2`)."""
    pattern = re.compile(r"joint_blocks\.(\d+)\.x_block\.attn2\.")
    return tuple(sorted({int(m[1]) for key in shapes if (m := pattern.match(key))}))


MMDIT_HEAD_WIDTH = 64  # Stability's MMDiT: hidden = 64 * heads (Forge's sd3_impls reads heads as width // 64)


def head_width(shapes: Shapes) -> int:
    """The attention head width: the qk-norm scale's length (SD3.5), else MMDiT's fixed 64 (SD3)."""
    scale = shapes.get("joint_blocks.0.x_block.attn.ln_q.weight")
    return int(scale[0]) if scale is not None else MMDIT_HEAD_WIDTH


def transformer_config(shapes: Shapes) -> dict[str, Any]:
    """diffusers `SD3Transformer2DModel` arguments from MMDiT shapes (prefix removed)."""
    hidden, in_channels, patch, _ = need_shape(shapes, "x_embedder.proj.weight")
    depth = block_count(shapes, "joint_blocks.")
    if depth == 0:
        raise ValueError("no joint_blocks")
    head_dim = head_width(shapes)
    if hidden % head_dim:
        raise ValueError(f"width {hidden} is not a whole number of {head_dim}-wide heads")
    positions = need_shape(shapes, "pos_embed")[1]
    max_size = math.isqrt(positions)
    if max_size * max_size != positions:
        raise ValueError(f"position table of {positions} entries is not square")
    out = need_shape(shapes, "final_layer.linear.weight")[0] // (patch * patch)
    return {
        "sample_size": min(128, max_size * patch),
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": depth,
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": need_shape(shapes, "context_embedder.weight")[1],
        "caption_projection_dim": need_shape(shapes, "context_embedder.weight")[0],
        "pooled_projection_dim": need_shape(shapes, "y_embedder.mlp.0.weight")[1],
        "out_channels": out,
        "pos_embed_max_size": max_size,
        "dual_attention_layers": dual_attention_layers(shapes),
        "qk_norm": "rms_norm" if "joint_blocks.0.x_block.attn.ln_q.weight" in shapes else None,
    }


def variant(config: Mapping[str, Any]) -> str:
    """Our architecture name: SD3.5 medium (MMDiT-X), SD3.5 large (qk-norm, 38 blocks), else SD3."""
    if config["dual_attention_layers"]:
        return "sd3.5-medium"
    if config["qk_norm"]:
        return "sd3.5-large"
    return "sd3"


# ---------------------------------------------------------------------------
# Key map: MMDiT -> diffusers
# ---------------------------------------------------------------------------

_TOP = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
}
_BLOCK = {
    "x_block.attn.proj": "attn.to_out.0",
    "context_block.attn.proj": "attn.to_add_out",
    "x_block.attn2.proj": "attn2.to_out.0",
    "x_block.attn.ln_q": "attn.norm_q",
    "x_block.attn.ln_k": "attn.norm_k",
    "context_block.attn.ln_q": "attn.norm_added_q",
    "context_block.attn.ln_k": "attn.norm_added_k",
    "x_block.attn2.ln_q": "attn2.norm_q",
    "x_block.attn2.ln_k": "attn2.norm_k",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "context_block.adaLN_modulation.1": "norm1_context.linear",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
}
_QKV = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


class UnmappedKey(KeyError):
    """A transformer key our map does not know (a foreign or newer variant)."""


def mmdit_to_diffusers(state: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """Rename (and split) MMDiT tensors into diffusers' names.

    `state` holds only the transformer's tensors without prefix. The last block's context
    stream is "pre-only" (modulation only): its modulation, like the final layer's, is stored
    (shift, scale) where diffusers' AdaLayerNormContinuous wants (scale, shift)."""
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        out.update(_map_one(key, tensor, depth))
    return out


def _map_one(key: str, tensor: Any, depth: int) -> dict[str, Any]:
    if key == "pos_embed":
        return {"pos_embed.pos_embed": tensor}
    stem, _, suffix = key.rpartition(".")
    if suffix not in ("weight", "bias"):
        raise UnmappedKey(key)
    if stem in _TOP:
        return {f"{_TOP[stem]}.{suffix}": tensor}
    if stem == "final_layer.adaLN_modulation.1":
        return {f"norm_out.linear.{suffix}": _swap_halves(tensor)}
    match = re.fullmatch(r"joint_blocks\.(\d+)\.(.+)", stem)
    if match is None:
        raise UnmappedKey(key)
    index, inner = int(match[1]), match[2]
    base = f"transformer_blocks.{index}."
    if inner in _QKV:
        parts = tensor.chunk(3, dim=0)
        return {f"{base}{name}.{suffix}": part for name, part in zip(_QKV[inner], parts, strict=True)}
    if inner == "context_block.adaLN_modulation.1" and index == depth - 1:
        return {f"{base}norm1_context.linear.{suffix}": _swap_halves(tensor)}
    if inner in _BLOCK:
        return {f"{base}{_BLOCK[inner]}.{suffix}": tensor}
    raise UnmappedKey(key)


def _swap_halves(tensor: Any) -> Any:
    import torch

    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)

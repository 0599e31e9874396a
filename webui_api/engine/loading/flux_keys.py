"""Flux.1 single files: which layout a file uses, the transformer's sizes, and our key map from
Black Forest Labs' names (`double_blocks.*`, `single_blocks.*`) to diffusers'
`FluxTransformer2DModel`.

Layouts people download:
- BFL's transformer-only file: the transformer's keys at the top level (`img_in.weight`, ...);
- all-in-one files (ComfyUI/Forge "checkpoint" saves): the transformer under
  `model.diffusion_model.`, the VAE under `vae.` (or `first_stage_model.`), text encoders under
  `text_encoders.clip_l.` and `text_encoders.t5xxl.`.

Every size is read from the tensors: depth by counting the numbered blocks, width from the
image projection, head width from the query-norm scale. Nothing here imports torch at module
import; the functions that move tensors take them as arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Shapes = Mapping[str, tuple[int, ...]]

ALL_IN_ONE_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("vae.", "first_stage_model.")
CLIP_L_PREFIX = "text_encoders.clip_l."
T5XXL_PREFIX = "text_encoders.t5xxl."
MARKER = "double_blocks.0.img_attn.qkv.weight"
SINGLE_MARKER = "single_blocks.0.linear1.weight"
FLUX_ROPE_AXES = (16, 56, 56)  # what BFL's Flux.1 uses for its 128-wide heads
MLP_RATIO = 4  # diffusers' Flux blocks have a fixed 4x MLP


@dataclass(frozen=True)
class FluxLayout:
    """Where the parts of a Flux file live ("" prefix: transformer-only file)."""

    transformer_prefix: str
    vae_prefix: str | None
    has_clip_l: bool
    has_t5xxl: bool


def is_flux(shapes: Shapes) -> bool:
    """True for a Flux.1 transformer in BFL's layout, bare or inside an all-in-one file."""
    return MARKER in shapes or ALL_IN_ONE_PREFIX + MARKER in shapes


def flux_layout(shapes: Shapes) -> FluxLayout:
    """The layout of a file `is_flux` accepted."""
    prefix = ALL_IN_ONE_PREFIX if ALL_IN_ONE_PREFIX + MARKER in shapes else ""
    vae = next((p for p in VAE_PREFIXES if p + "decoder.conv_in.weight" in shapes), None)
    return FluxLayout(
        transformer_prefix=prefix,
        vae_prefix=vae,
        has_clip_l=any(key.startswith(CLIP_L_PREFIX) for key in shapes),
        has_t5xxl=any(key.startswith(T5XXL_PREFIX) for key in shapes),
    )


def transformer_shapes(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    """The transformer's keys with `prefix` removed (everything else dropped)."""
    stripped = {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}
    return {key: shape for key, shape in stripped.items() if is_transformer_key(key)}


_TRANSFORMER_ROOTS = (
    "img_in.",
    "txt_in.",
    "time_in.",
    "vector_in.",
    "guidance_in.",
    "double_blocks.",
    "single_blocks.",
    "final_layer.",
)


def is_transformer_key(key: str) -> bool:
    return key.startswith(_TRANSFORMER_ROOTS)


def block_count(shapes: Shapes, root: str) -> int:
    """How many blocks `root` numbers (0..n-1; a gap is an error); 0 when there are none."""
    pattern = re.compile(re.escape(root) + r"(\d+)\.")
    found = {int(m[1]) for key in shapes if (m := pattern.match(key))}
    if found and found != set(range(max(found) + 1)):
        raise ValueError(f"{root} blocks are not numbered 0..n-1: {sorted(found)[:8]}")
    return max(found) + 1 if found else 0


def need_shape(shapes: Shapes, key: str) -> tuple[int, ...]:
    """The shape of `key`; KeyError (a config that cannot be inferred) when it is absent."""
    if key not in shapes:
        raise KeyError(key)
    return shapes[key]


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE axis widths (index, height, width) that sum to the head width, all even.

    Flux.1's 128-wide heads use (16, 56, 56); narrower heads (test models) keep the shape of
    that split: an eighth for the index axis, the rest shared by height and width."""
    if head_dim == sum(FLUX_ROPE_AXES):
        return FLUX_ROPE_AXES
    if head_dim < 6 or head_dim % 2:
        raise ValueError(f"attention heads {head_dim} wide cannot carry 3-axis rotary embeddings")
    index = 2 * max(1, head_dim // 16)
    rest = head_dim - index
    height = (rest // 2) // 2 * 2
    return (index, height, rest - height)


def transformer_config(shapes: Shapes) -> dict[str, Any]:
    """diffusers `FluxTransformer2DModel` arguments from BFL-layout shapes (prefix removed)."""
    hidden, in_channels = need_shape(shapes, "img_in.weight")
    head_dim = need_shape(shapes, "double_blocks.0.img_attn.norm.query_norm.scale")[0]
    if hidden % head_dim:
        raise ValueError(f"width {hidden} is not a whole number of {head_dim}-wide heads")
    mlp = need_shape(shapes, "double_blocks.0.img_mlp.0.weight")[0]
    if mlp != MLP_RATIO * hidden:
        raise ValueError(f"MLP width {mlp} is not {MLP_RATIO}x the width {hidden}")
    out = need_shape(shapes, "final_layer.linear.weight")[0]
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": None if out == in_channels else out,
        "num_layers": block_count(shapes, "double_blocks."),
        "num_single_layers": block_count(shapes, "single_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": need_shape(shapes, "txt_in.weight")[1],
        "pooled_projection_dim": need_shape(shapes, "vector_in.in_layer.weight")[1],
        "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
        "axes_dims_rope": list(rope_axes(head_dim)),
    }


# ---------------------------------------------------------------------------
# Key map: BFL -> diffusers
# ---------------------------------------------------------------------------

_MLP_EMBEDDERS = {
    "time_in": "time_text_embed.timestep_embedder",
    "vector_in": "time_text_embed.text_embedder",
    "guidance_in": "time_text_embed.guidance_embedder",
}
_DOUBLE_RENAMES = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
}
_DOUBLE_QKV = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE_RENAMES = {
    "modulation.lin": "norm.linear",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
    "linear2": "proj_out",
}
_SINGLE_SPLIT = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
_TOP_RENAMES = {"txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out"}


class UnmappedKey(KeyError):
    """A transformer key our map does not know (a foreign or newer variant)."""


def _split_suffix(key: str) -> tuple[str, str]:
    """("double_blocks.0.img_mod.lin", "weight") for parameters with weight/bias ends;
    keys such as "...query_norm.scale" come back whole with an empty suffix."""
    stem, _, last = key.rpartition(".")
    return (stem, last) if last in ("weight", "bias") else (key, "")


def bfl_to_diffusers(state: Mapping[str, Any], hidden: int) -> dict[str, Any]:
    """Rename (and split) BFL-layout transformer tensors into diffusers' names.

    `state` holds only the transformer's tensors without prefix; `hidden` is the width
    (`img_in.weight`'s first dimension). Fused projections are split into views, so no tensor
    is copied except the final norm's modulation, whose halves diffusers stores swapped."""
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        out.update(_map_one(key, tensor, hidden))
    return out


def _map_one(key: str, tensor: Any, hidden: int) -> dict[str, Any]:
    stem, suffix = _split_suffix(key)
    end = f".{suffix}" if suffix else ""
    root, _, rest = stem.partition(".")
    if root in _MLP_EMBEDDERS:
        layer = {"in_layer": "linear_1", "out_layer": "linear_2"}.get(rest)
        if layer is not None:
            return {f"{_MLP_EMBEDDERS[root]}.{layer}{end}": tensor}
    if stem in _TOP_RENAMES:
        return {_TOP_RENAMES[stem] + end: tensor}
    if stem == "final_layer.adaLN_modulation.1":
        return {f"norm_out.linear{end}": _swap_halves(tensor)}
    if root in ("double_blocks", "single_blocks"):
        index, _, inner = rest.partition(".")
        mapped = _map_block(root, inner, end, tensor, hidden)
        if mapped is not None:
            target = "transformer_blocks" if root == "double_blocks" else "single_transformer_blocks"
            return {f"{target}.{index}.{name}": value for name, value in mapped.items()}
    raise UnmappedKey(key)


def _map_block(kind: str, inner: str, end: str, tensor: Any, hidden: int) -> dict[str, Any] | None:
    if kind == "double_blocks":
        if inner in _DOUBLE_QKV:
            parts = tensor.split(hidden, dim=0)
            return {name + end: part for name, part in zip(_DOUBLE_QKV[inner], parts, strict=True)}
        return _renamed(_DOUBLE_RENAMES, inner, end, tensor)
    if inner == "linear1":
        sizes = [hidden, hidden, hidden, tensor.shape[0] - 3 * hidden]
        return {name + end: part for name, part in zip(_SINGLE_SPLIT, tensor.split(sizes, dim=0), strict=True)}
    return _renamed(_SINGLE_RENAMES, inner, end, tensor)


def _renamed(table: Mapping[str, str], inner: str, end: str, tensor: Any) -> dict[str, Any] | None:
    if inner in table:
        return {table[inner] + end: tensor}
    return None


def _swap_halves(tensor: Any) -> Any:
    """BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous wants
    (scale, shift)."""
    import torch

    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)

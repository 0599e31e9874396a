"""Network sizes read from a checkpoint's tensor shapes, on top of the bundled configs.

The bundled configs (configs/*.json) carry what a file cannot tell: block kinds, activation
functions, normalisation groups, attention-head rules, latent scale. The sizes (widths,
depths, which levels attend, context width, input channels) are read from the tensors, the
way A1111 instantiates whatever its `.yaml` describes. For every released SD1/SD2/SDXL model
the result equals the bundled config (a test checks that), and smaller or unusual variants
(the test suite's tiny checkpoints among them) load with no config file at all. Every
tensor is checked against the built module afterwards, so a wrong guess cannot load silently.

All functions take `shapes`: original-layout key -> tensor shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Shapes = Mapping[str, tuple[int, ...]]

HEAD_CHANNELS = 64  # SD2/SDXL attention heads are 64 wide; CLIP/OpenCLIP heads too


def key_indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) across the keys."""
    regex = re.compile(pattern)
    return sorted({int(m[1]) for key in shapes if (m := regex.match(key))})


def key_count(shapes: Shapes, pattern: str) -> int:
    """How many numbered blocks `pattern` finds (highest index + 1; 0 when none)."""
    found = key_indices(shapes, pattern)
    return max(found) + 1 if found else 0


def _need(shapes: Shapes, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise KeyError(key)
    return shapes[key]


# ---------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------


def unet_config(shapes: Shapes, base: Mapping[str, Any], head_channels: int | None) -> dict[str, Any]:
    """The diffusers UNet config for an original-layout UNet under "model.diffusion_model.".

    `head_channels` is the architecture's head rule: 64-channel heads (SD2, SDXL) or None for
    a fixed head count taken from `base` (SD1: 8 heads).
    """
    p = "model.diffusion_model."
    conv_in = _need(shapes, p + "input_blocks.0.0.weight")
    downsamples = key_indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight")
    blocks = key_count(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")
    levels = len(downsamples) + 1
    per_level, remainder = divmod(blocks - 1 - len(downsamples), levels)
    if remainder or per_level < 1:
        raise ValueError(f"cannot split {blocks} input blocks into {levels} levels")
    firsts = [1 + level * (per_level + 1) for level in range(levels)]
    widths = [_need(shapes, f"{p}input_blocks.{i}.0.out_layers.3.weight")[0] for i in firsts]
    depths = [key_count(shapes, re.escape(f"{p}input_blocks.{i}.1.transformer_blocks.") + r"(\d+)\.") for i in firsts]
    attends = [depth > 0 for depth in depths]
    config = {
        **base,
        "in_channels": conv_in[1],
        "out_channels": _need(shapes, p + "out.2.weight")[0],
        "layers_per_block": per_level,
        "block_out_channels": widths,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "cross_attention_dim": _context_width(shapes, p),
        "use_linear_projection": _linear_projection(shapes, p),
    }
    return _with_attention_sizes(config, shapes, p, widths, depths, head_channels)


def _context_width(shapes: Shapes, prefix: str) -> int:
    key = next((k for k in shapes if k.startswith(prefix) and k.endswith(".attn2.to_k.weight")), None)
    if key is None:
        raise KeyError(prefix + "...attn2.to_k.weight")
    return shapes[key][1]


def _linear_projection(shapes: Shapes, prefix: str) -> bool:
    key = next(k for k in shapes if k.startswith(prefix) and k.endswith(".proj_in.weight"))
    return len(shapes[key]) == 2


def _with_attention_sizes(
    config: dict[str, Any], shapes: Shapes, prefix: str, widths: list[int], depths: list[int], head_channels: int | None
) -> dict[str, Any]:
    if head_channels is not None:
        config["attention_head_dim"] = [max(1, width // head_channels) for width in widths]
    middle = key_count(shapes, re.escape(prefix + "middle_block.1.transformer_blocks.") + r"(\d+)\.")
    if "transformer_layers_per_block" in config:
        # diffusers sizes the middle block by the LAST entry; levels without attention ignore
        # theirs, so those entries carry the middle block's depth
        config["transformer_layers_per_block"] = [depth if depth > 0 else middle for depth in depths]
    elif any(depth > 1 for depth in depths) or middle > 1:
        raise ValueError(
            f"transformer depths {depths} (middle {middle}) need a config with transformer_layers_per_block"
        )
    label = prefix + "label_emb.0.0.weight"
    if label in shapes:
        config["projection_class_embeddings_input_dim"] = shapes[label][1]
    return config


# ---------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------


def vae_config(shapes: Shapes, base: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The diffusers AutoencoderKL config for an original-layout VAE under `prefix`."""
    levels = key_count(shapes, re.escape(prefix + "encoder.down.") + r"(\d+)\.")
    per_level = key_count(shapes, re.escape(prefix + "encoder.down.0.block.") + r"(\d+)\.")
    widths = [_need(shapes, f"{prefix}encoder.down.{i}.block.0.conv2.weight")[0] for i in range(levels)]
    return {
        **base,
        "in_channels": _need(shapes, prefix + "encoder.conv_in.weight")[1],
        "out_channels": _need(shapes, prefix + "decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": widths,
        "layers_per_block": per_level,
        "latent_channels": _need(shapes, prefix + "post_quant_conv.weight")[1],
    }


# ---------------------------------------------------------------------------
# Text encoders (transformers CLIPTextConfig)
# ---------------------------------------------------------------------------


def clip_text_config(shapes: Shapes, base: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A CLIP text tower stored with transformers' names under `prefix` (+ "text_model.")."""
    p = prefix + "text_model."
    width = _need(shapes, p + "embeddings.token_embedding.weight")
    return _text_sizes(
        base,
        vocab=width[0],
        hidden=width[1],
        positions=_need(shapes, p + "embeddings.position_embedding.weight")[0],
        layers=key_count(shapes, re.escape(p + "encoder.layers.") + r"(\d+)\."),
        intermediate=_need(shapes, p + "encoder.layers.0.mlp.fc1.weight")[0],
        projection=None,
    )


def openclip_text_config(shapes: Shapes, base: Mapping[str, Any], prefix: str, drop_last_layers: int) -> dict[str, Any]:
    """An OpenCLIP text tower under `prefix`; SD2 conditions on the penultimate layer, so its
    spec drops the last one (`drop_last_layers=1`)."""
    width = _need(shapes, prefix + "token_embedding.weight")
    projection = shapes.get(prefix + "text_projection")
    return _text_sizes(
        base,
        vocab=width[0],
        hidden=width[1],
        positions=_need(shapes, prefix + "positional_embedding")[0],
        layers=key_count(shapes, re.escape(prefix + "transformer.resblocks.") + r"(\d+)\.") - drop_last_layers,
        intermediate=_need(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        projection=projection[1] if projection else None,
    )


def _text_sizes(
    base: Mapping[str, Any],
    *,
    vocab: int,
    hidden: int,
    positions: int,
    layers: int,
    intermediate: int,
    projection: int | None,
) -> dict[str, Any]:
    if layers < 1:
        raise ValueError(f"a text encoder needs at least one layer, found {layers}")
    return {
        **base,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "max_position_embeddings": positions,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "num_attention_heads": max(1, hidden // HEAD_CHANNELS),
        "projection_dim": projection if projection is not None else base.get("projection_dim", hidden),
    }

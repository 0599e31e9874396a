"""Tiny ControlNets for the tests, written the way users have them on disk.

`tiny_controlnet(seed)` builds a diffusers ControlNetModel that fits the embedded tiny UNet
(widths 16/32/64, attention only at the lowest level, 32-wide context) and fills EVERY
weight from a seeded generator: a freshly built ControlNet has zero convolutions at its
outputs and would change nothing. `write_original` saves it in the original (cldm) layout
with the key map below, written here independently of the loader's rules so that a wrong
rule in either place shows up as a failed load; `write_diffusers` saves a diffusers folder.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

TINY_CONTROLNET = {
    "in_channels": 4,
    "block_out_channels": (16, 32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "conditioning_embedding_out_channels": (8, 8, 16, 16),
}
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def tiny_controlnet(seed: int, config: Mapping[str, Any] = TINY_CONTROLNET) -> Any:
    from diffusers import ControlNetModel

    from tests.engine.ldm_checkpoints import fill_random_weights

    with torch.random.fork_rng(devices=[]):
        model = ControlNetModel(**config)
    fill_random_weights(model, torch.Generator().manual_seed(seed))
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------
# diffusers -> original names (the inverse of what loading does), SD-style layouts
# ---------------------------------------------------------------------------


def _resnet(rest: str) -> str:
    module, param = rest.rsplit(".", 1)
    return f"{RESNET[module]}.{param}"


def original_name(key: str, layers_per_block: int, hint_convs: int) -> str:
    """One diffusers ControlNetModel key under its cldm name."""
    step = layers_per_block + 1  # input blocks per level: resnets, then the downsample
    rules = [
        (r"conv_in\.(.+)", lambda m: f"input_blocks.0.0.{m[1]}"),
        (r"time_embedding\.linear_1\.(.+)", lambda m: f"time_embed.0.{m[1]}"),
        (r"time_embedding\.linear_2\.(.+)", lambda m: f"time_embed.2.{m[1]}"),
        (r"add_embedding\.linear_1\.(.+)", lambda m: f"label_emb.0.0.{m[1]}"),
        (r"add_embedding\.linear_2\.(.+)", lambda m: f"label_emb.0.2.{m[1]}"),
        (r"controlnet_cond_embedding\.conv_in\.(.+)", lambda m: f"input_hint_block.0.{m[1]}"),
        (r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", lambda m: f"input_hint_block.{2 + 2 * int(m[1])}.{m[2]}"),
        (r"controlnet_cond_embedding\.conv_out\.(.+)", lambda m: f"input_hint_block.{2 * hint_convs - 2}.{m[1]}"),
        (r"controlnet_down_blocks\.(\d+)\.(.+)", lambda m: f"zero_convs.{m[1]}.0.{m[2]}"),
        (r"controlnet_mid_block\.(.+)", lambda m: f"middle_block_out.0.{m[1]}"),
        (
            r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
            lambda m: f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.0.{_resnet(m[3])}",
        ),
        (
            r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
            lambda m: f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.1.{m[3]}",
        ),
        (
            r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)",
            lambda m: f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}",
        ),
        (r"mid_block\.resnets\.(\d+)\.(.+)", lambda m: f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda m: f"middle_block.1.{m[1]}"),
    ]
    for pattern, rename in rules:
        if m := re.fullmatch(pattern, key):
            return rename(m)
    raise KeyError(f"no original name for {key!r}")


def original_state(model: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    config = model.config
    hint_convs = 2 * len(config.conditioning_embedding_out_channels)  # conv_in, 2 per step, conv_out
    return {
        prefix + original_name(key, config.layers_per_block, hint_convs): value.contiguous()
        for key, value in model.state_dict().items()
    }


def write_original(model: Any, path: Path, prefix: str = "") -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_state(model, prefix), str(path))
    return path


def write_diffusers(model: Any, folder: Path) -> Path:
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def pattern_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A deterministic image with structure (stripes and noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    base[:, ::8] = 255
    return Image.fromarray(base)


def b64_png(image: Image.Image, data_url: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/png;base64,{text}" if data_url else text

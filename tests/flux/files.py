"""Flux.1 files built in the tests from the published layout (BFL names), any width/depth.

`bfl_transformer_shapes` lists every tensor of BFL's transformer file; the published model is
width 3072, 128-wide heads, 19 double and 38 single blocks, 64 input channels, T5 context 4096,
CLIP pooled 768. Tests use fewer blocks (and, where no oracle pins the width, narrower ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FluxSizes:
    hidden: int = 3072
    head_dim: int = 128
    double: int = 19
    single: int = 38
    in_channels: int = 64
    context: int = 4096
    pooled: int = 768
    guidance: bool = True  # dev has the guidance embedder, schnell not


TINY = FluxSizes(hidden=32, head_dim=16, double=2, single=2, in_channels=64, context=32, pooled=32)


def bfl_transformer_shapes(s: FluxSizes) -> dict[str, tuple[int, ...]]:
    h, mlp = s.hidden, 4 * s.hidden
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out: int, inp: int) -> None:
        shapes[f"{name}.weight"] = (out, inp)
        shapes[f"{name}.bias"] = (out,)

    linear("img_in", h, s.in_channels)
    linear("txt_in", h, s.context)
    embedders = ["time_in", "vector_in"] + (["guidance_in"] if s.guidance else [])
    for name in embedders:
        linear(f"{name}.in_layer", h, s.pooled if name == "vector_in" else 256)
        linear(f"{name}.out_layer", h, h)
    for i in range(s.double):
        p = f"double_blocks.{i}."
        for stream in ("img", "txt"):
            linear(f"{p}{stream}_mod.lin", 6 * h, h)
            linear(f"{p}{stream}_attn.qkv", 3 * h, h)
            shapes[f"{p}{stream}_attn.norm.query_norm.scale"] = (s.head_dim,)
            shapes[f"{p}{stream}_attn.norm.key_norm.scale"] = (s.head_dim,)
            linear(f"{p}{stream}_attn.proj", h, h)
            linear(f"{p}{stream}_mlp.0", mlp, h)
            linear(f"{p}{stream}_mlp.2", h, mlp)
    for i in range(s.single):
        p = f"single_blocks.{i}."
        linear(f"{p}modulation.lin", 3 * h, h)
        linear(f"{p}linear1", 3 * h + mlp, h)
        linear(f"{p}linear2", h, h + mlp)
        shapes[f"{p}norm.query_norm.scale"] = (s.head_dim,)
        shapes[f"{p}norm.key_norm.scale"] = (s.head_dim,)
    linear("final_layer.adaLN_modulation.1", 2 * h, h)
    linear("final_layer.linear", s.in_channels, h)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) * scale for key, shape in shapes.items()}

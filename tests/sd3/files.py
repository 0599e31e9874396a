"""SD3 / SD3.5 files built in the tests from the published MMDiT layout, any width/depth.

`mmdit_shapes` lists every tensor of Stability's MMDiT: SD3 medium is depth 24 (width 1536),
SD3.5 large depth 38 with qk-norm, SD3.5 medium depth 24 with qk-norm and MMDiT-X dual attention
in blocks 0..12. Tests use depth 2 and narrow widths (64-wide heads where the file has no
qk-norm scale to tell the head width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tests.flux.files import random_state, tiny_clip_state, tiny_t5_state


@dataclass(frozen=True)
class MMDiTSizes:
    depth: int = 24
    head_dim: int = 64
    patch: int = 2
    in_channels: int = 16
    context: int = 4096
    pooled: int = 2048
    max_positions: int = 192
    qk_norm: bool = False
    dual: tuple[int, ...] = ()
    heads: int = 0  # 0: as many heads as blocks (the published models); tests with fewer blocks set it

    @property
    def hidden(self) -> int:
        return (self.heads or self.depth) * self.head_dim


TINY = MMDiTSizes(depth=2, head_dim=64, context=64, pooled=64, max_positions=16)
TINY_35_MEDIUM = MMDiTSizes(depth=2, head_dim=16, context=64, pooled=64, max_positions=16, qk_norm=True, dual=(0,))
TINY_35_LARGE = MMDiTSizes(depth=2, head_dim=16, context=64, pooled=64, max_positions=16, qk_norm=True)


def mmdit_shapes(s: MMDiTSizes) -> dict[str, tuple[int, ...]]:
    h, p = s.hidden, s.patch
    shapes: dict[str, tuple[int, ...]] = {"pos_embed": (1, s.max_positions**2, h)}

    def linear(name: str, out: int, inp: int) -> None:
        shapes[f"{name}.weight"] = (out, inp)
        shapes[f"{name}.bias"] = (out,)

    shapes["x_embedder.proj.weight"] = (h, s.in_channels, p, p)
    shapes["x_embedder.proj.bias"] = (h,)
    linear("t_embedder.mlp.0", h, 256)
    linear("t_embedder.mlp.2", h, h)
    linear("y_embedder.mlp.0", h, s.pooled)
    linear("y_embedder.mlp.2", h, h)
    linear("context_embedder", h, s.context)
    for i in range(s.depth):
        last = i == s.depth - 1
        for stream in ("x_block", "context_block"):
            b = f"joint_blocks.{i}.{stream}."
            pre_only = last and stream == "context_block"
            dual = stream == "x_block" and i in s.dual
            linear(b + "adaLN_modulation.1", (2 if pre_only else 9 if dual else 6) * h, h)
            linear(b + "attn.qkv", 3 * h, h)
            if s.qk_norm:
                shapes[b + "attn.ln_q.weight"] = (s.head_dim,)
                shapes[b + "attn.ln_k.weight"] = (s.head_dim,)
            if not pre_only:
                linear(b + "attn.proj", h, h)
                linear(b + "mlp.fc1", 4 * h, h)
                linear(b + "mlp.fc2", h, 4 * h)
            if dual:
                linear(b + "attn2.qkv", 3 * h, h)
                linear(b + "attn2.proj", h, h)
                if s.qk_norm:
                    shapes[b + "attn2.ln_q.weight"] = (s.head_dim,)
                    shapes[b + "attn2.ln_k.weight"] = (s.head_dim,)
    linear("final_layer.adaLN_modulation.1", 2 * h, h)
    linear("final_layer.linear", p * p * s.in_channels, h)
    return shapes


def tiny_sd3_vae_state(seed: int = 5) -> dict[str, torch.Tensor]:
    """SD3's autoencoder layout (original names, 16 latent channels, no quant convs), small."""
    from tests.flux.files import tiny_vae_state

    return tiny_vae_state(seed)


def tiny_projected_clip_state(width: int, seed: int) -> dict[str, torch.Tensor]:
    """A CLIP text encoder with its text projection, as SD3 files store CLIP-L and CLIP-G."""
    state = tiny_clip_state(width, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    state["text_projection.weight"] = torch.randn(width, width, generator=generator) * 0.05
    return state


def tiny_parts(sizes: MMDiTSizes = TINY, clip_l: int = 32, clip_g: int = 32) -> dict[str, dict[str, torch.Tensor]]:
    """Widths must add up: CLIP-L + CLIP-G pooled = `pooled`; their states padded to `context`."""
    return {
        "transformer": random_state(mmdit_shapes(sizes)),
        "vae": tiny_sd3_vae_state(),
        "clip_l": tiny_projected_clip_state(clip_l, 4),
        "clip_g": tiny_projected_clip_state(clip_g, 6),
        "t5xxl": tiny_t5_state(sizes.context),
    }


def single_file(parts: dict[str, dict[str, torch.Tensor]], packed: tuple[str, ...] = ("clip_l", "clip_g", "t5xxl")):
    state = {"model.diffusion_model." + k: v for k, v in parts["transformer"].items()}
    state |= {"first_stage_model." + k: v for k, v in parts["vae"].items()}
    for kind in packed:
        state |= {f"text_encoders.{kind}.transformer." + k: v for k, v in parts[kind].items()}
    return state


def write_models(root, parts, packed: tuple[str, ...] = ("clip_l", "clip_g", "t5xxl"), name: str = "sd3.safetensors"):
    """A models folder: the single file in Stable-diffusion, the encoders it does not pack in
    text_encoder (plus the small T5 tokenizer); returns the paths."""
    from safetensors.torch import save_file

    from tests.flux.files import write_t5_tokenizer

    ckpt_dir, vae_dir, te_dir = root / "Stable-diffusion", root / "VAE", root / "text_encoder"
    for folder in (ckpt_dir, vae_dir, te_dir):
        folder.mkdir(parents=True, exist_ok=True)
    write_t5_tokenizer(te_dir / "t5-tokenizer")
    paths: dict[str, object] = {"ckpt_dir": ckpt_dir, "vae_dir": vae_dir, "te_dir": te_dir,
                                "checkpoint": ckpt_dir / name}
    save_file({k: v.contiguous() for k, v in single_file(parts, packed).items()}, str(paths["checkpoint"]))
    for kind in ("clip_l", "clip_g", "t5xxl"):
        if kind not in packed:
            paths[kind] = te_dir / f"{kind}.safetensors"
            save_file({k: v.contiguous() for k, v in parts[kind].items()}, str(paths[kind]))
    return paths

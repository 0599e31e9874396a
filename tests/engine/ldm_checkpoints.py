"""Test checkpoints in the original (LDM / SGM, "A1111") single-file layout.

`tiny_networks(family)` builds small diffusers / transformers networks with deterministic
random weights; `ldm_state_dict` renames them to the original layout with the project's key
rules (the inverse of what loading does); `write_checkpoint` saves them as a user would
have them. `full_size=True` builds the real SD1.5 / SD2.1 / SDXL / refiner sizes (slow tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui_api.engine.loading import ldm_keys
from webui_api.engine.loading.architectures import ARCHITECTURES, load_config
from webui_api.engine.loading.builder import empty_text_encoder, empty_unet, empty_vae
from webui_api.engine.models import cast_floating

TINY_UNET = {"block_out_channels": [32, 64], "layers_per_block": 1, "sample_size": 8}
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,
    "projection_dim": 64,
}
TINY_VAE = {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "sample_size": 64}
TIME_EMBED = 256  # SDXL's size/crop/aesthetic embedding width per number


@dataclass
class Networks:
    """Source networks of one test checkpoint (CPU, float32, eval mode)."""

    family: str
    unet: Any
    vae: Any
    text_encoder: Any = None
    text_encoder_2: Any = None


def _tiny_unet_config(family: str, in_channels: int) -> dict[str, Any]:
    base = load_config(ARCHITECTURES[family].unet_config)
    config = {**base, **TINY_UNET, "in_channels": in_channels}
    if family == "sd1":
        config.update(
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]
        )
        config.update(cross_attention_dim=64)
    else:
        config.update(
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"]
        )
        config.update(attention_head_dim=[1, 1])
    if family == "sd2":
        config.update(cross_attention_dim=64)
    if family == "sdxl":
        config.update(
            cross_attention_dim=128,
            transformer_layers_per_block=[2, 2],
            projection_class_embeddings_input_dim=64 + 6 * TIME_EMBED,
        )
    if family == "sdxl-refiner":
        config.update(
            cross_attention_dim=64,
            transformer_layers_per_block=[2, 2],
            projection_class_embeddings_input_dim=64 + 5 * TIME_EMBED,
        )
    return config


def _text(config_name: str, with_projection: bool, full_size: bool) -> Any:
    config = load_config(config_name) if full_size else {**load_config(config_name), **TINY_TEXT}
    return empty_text_encoder(config, with_projection)


def fill_random_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """N(0, 1/fan_in) weights, unit norms, small biases, drawn in name order: random but well
    scaled, so tiny and full-size test models give finite, seed-determined outputs."""
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
            elif name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            else:
                param.fill_(1.0)


def _materialise(
    module: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """Turn a meta module into a real one with N(0, 1/fan_in) weights, unit norms, small
    biases, stored in `dtype` (drawn in float32 one tensor at a time, so a full-size model
    in float16 never needs its float32 size in RAM)."""
    module.to_empty(device="cpu")
    cast_floating(module, dtype)
    fill_random_weights(module, generator)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            if name.endswith("position_ids"):
                buffer.copy_(torch.arange(buffer.shape[-1]).expand(buffer.shape))
    return module.eval().requires_grad_(False)


def build_networks(
    family: str, *, seed: int = 0, full_size: bool = False, in_channels: int = 4, dtype: torch.dtype = torch.float32
) -> Networks:
    """Deterministic random networks for `family` ("sd1", "sd2", "sdxl", "sdxl-refiner")."""
    arch = ARCHITECTURES[family]
    unet_config = _tiny_unet_config(family, in_channels)
    vae_config = {**load_config(arch.vae_config), **TINY_VAE}
    if full_size:
        unet_config = {**load_config(arch.unet_config), "in_channels": in_channels}
        vae_config = load_config(arch.vae_config)
    generator = torch.Generator().manual_seed(seed)
    unet = _materialise(empty_unet(unet_config), generator, dtype)
    nets = Networks(family, unet, _materialise(empty_vae(vae_config), generator, dtype))
    for spec in arch.text_encoders:
        encoder = _materialise(_text(spec.config, spec.with_projection, full_size), generator, dtype)
        setattr(nets, spec.slot, encoder)
    return nets


def ldm_state_dict(nets: Networks, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The networks under their original single-file names."""
    arch = ARCHITECTURES[nets.family]
    layout = ldm_keys.UNetLayout.from_config(nets.unet.config)
    state = {ldm_keys.unet_key_to_ldm(k, layout): v for k, v in nets.unet.state_dict().items()}
    levels = len(nets.vae.config.block_out_channels)
    for key, value in nets.vae.state_dict().items():
        if ".mid_block.attentions.0.to_" in key and key.endswith("weight"):
            value = value.reshape(*value.shape, 1, 1)  # the original stores these as 1x1 convolutions
        state[ldm_keys.vae_key_to_ldm(key, levels)] = value
    for spec in arch.text_encoders:
        state.update(_text_state(getattr(nets, spec.slot), spec))
    return {key: (value.to(dtype) if dtype else value).contiguous() for key, value in state.items()}


def _text_state(encoder: Any, spec: Any) -> dict[str, torch.Tensor]:
    hf = {k: v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
    if spec.layout == "clip":
        return {ldm_keys.clip_key_to_ldm(k, spec.prefix): v for k, v in hf.items()}
    state = ldm_keys.hf_to_openclip(hf, spec.prefix)
    if spec.drop_last_layers:  # SD2 files hold OpenCLIP-H's last layer (unused) and its projection
        state.update(_extra_openclip_layer(state, spec.prefix, encoder.config.num_hidden_layers))
        width = encoder.config.hidden_size
        state[spec.prefix + "text_projection"] = torch.ones(width, width)
    state[spec.prefix + "logit_scale"] = torch.tensor(4.6)
    return state


def _extra_openclip_layer(state: dict[str, torch.Tensor], prefix: str, index: int) -> dict[str, torch.Tensor]:
    first = f"{prefix}transformer.resblocks.0."
    return {
        f"{prefix}transformer.resblocks.{index}." + k[len(first) :]: v.clone() + 1.0
        for k, v in state.items()
        if k.startswith(first)
    }


def write_checkpoint(path: Path, nets: Networks, dtype: torch.dtype | None = None, **extra: torch.Tensor) -> Path:
    """Save `nets` as an original-layout .safetensors (extra tensors added as given)."""
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({**ldm_state_dict(nets, dtype), **extra}, str(path))
    return path


def write_vae(path: Path, vae: Any) -> Path:
    """Save a VAE as A1111 VAE files hold it: original names, no "first_stage_model." prefix."""
    import safetensors.torch

    levels = len(vae.config.block_out_channels)
    state = {}
    for key, value in vae.state_dict().items():
        if ".mid_block.attentions.0.to_" in key and key.endswith("weight"):
            value = value.reshape(*value.shape, 1, 1)
        state[ldm_keys.vae_key_to_ldm(key, levels)[len(ldm_keys.VAE_PREFIX) :]] = value.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(path))
    return path


def tiny_vae(seed: int) -> Any:
    return _materialise(empty_vae({**load_config("vae-sd"), **TINY_VAE}), torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------
# LoRA files
# ---------------------------------------------------------------------------

RANK = 4


def lora_pair(
    generator: torch.Generator, out_shape: tuple[int, ...], in_shape: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """lora_down (rank, *in) and lora_up (out, rank, 1, 1 | -) with an alpha of half the rank."""
    up_tail = (1, 1) if len(in_shape) > 1 else ()
    return {
        "lora_down.weight": torch.randn((RANK, *in_shape), generator=generator),
        "lora_up.weight": torch.randn((out_shape[0], RANK, *up_tail), generator=generator),
        "alpha": torch.tensor(RANK / 2),
    }


def kohya_sd1_lora(unet, text_encoder, seed: int = 0) -> dict[str, torch.Tensor]:
    """A kohya-style SD1 LoRA: attention (linear) layers, a LoCon conv, a text-encoder layer."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(unet.named_modules())
    chosen = [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.proj_out",
        "up_blocks.1.resnets.0.conv1",
    ]
    state = {}
    for path in chosen:
        weight = modules[path].weight
        in_shape = tuple(weight.shape[1:]) if weight.ndim == 4 else (weight.shape[1],)
        for part, tensor in lora_pair(generator, tuple(weight.shape), in_shape).items():
            state[f"lora_unet_{path.replace('.', '_')}.{part}"] = tensor
    prefix = "text_model." if hasattr(text_encoder, "text_model") else ""
    q = text_encoder.get_submodule(prefix + "encoder.layers.1.self_attn.q_proj")
    for part, tensor in lora_pair(generator, tuple(q.weight.shape), (q.weight.shape[1],)).items():
        state[f"lora_te_text_model_encoder_layers_1_self_attn_q_proj.{part}"] = tensor
    return {key: value * 0.5 if key.endswith("weight") else value for key, value in state.items()}

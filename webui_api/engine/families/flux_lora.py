"""LoRA for Flux.1: the key formats people share, merged into the diffusers transformer.

Formats (told apart per key):
- Kohya / sd-scripts / Forge: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `.alpha`
  (BFL module names with dots turned into underscores);
- BFL / ai-toolkit: `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight` (also without
  the prefix);
- diffusers / PEFT: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`.

A BFL-named delta is computed at its BFL shape (fused qkv, single blocks' linear1) and then
split into diffusers' modules by the same key map the loader uses (flux_keys), so a LoRA on a
fused projection lands on exactly the rows the checkpoint's weights did. Text-encoder parts
(`lora_te1_*`) are not applied yet and are reported in the log. Weights are restored bit
exactly after the job (NetworkPatch keeps copies).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from webui_api.engine.loading import flux_keys
from webui_api.engine.networks import LoadedNetwork, NetworkPatch, lora_delta, weight_of
from webui_api.errors import BadRequest

log = logging.getLogger(__name__)

KOHYA_PREFIX = "lora_unet_"
BFL_PREFIXES = ("diffusion_model.", "model.diffusion_model.", "")
DIFFUSERS_PREFIXES = ("transformer.", "base_model.model.")
_LINEAR_STEMS = (
    "img_in", "txt_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer", "vector_in.out_layer",
    "guidance_in.in_layer", "guidance_in.out_layer", "final_layer.linear", "final_layer.adaLN_modulation.1",
)
_DOUBLE_STEMS = (
    "img_mod.lin", "txt_mod.lin", "img_attn.qkv", "txt_attn.qkv", "img_attn.proj", "txt_attn.proj",
    "img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2",
)
_SINGLE_STEMS = ("modulation.lin", "linear1", "linear2")


def bfl_linear_stems(config: Mapping[str, Any]) -> list[str]:
    """Every BFL Linear module name of a transformer with this config."""
    stems = list(_LINEAR_STEMS)
    stems += [f"double_blocks.{i}.{s}" for i in range(int(config["num_layers"])) for s in _DOUBLE_STEMS]
    stems += [f"single_blocks.{i}.{s}" for i in range(int(config["num_single_layers"])) for s in _SINGLE_STEMS]
    return stems


def resolve_group(
    name: str, kohya: Mapping[str, str], modules: Mapping[str, torch.nn.Module]
) -> tuple[str, str] | None:
    """("bfl" | "diffusers", module name) for a LoRA group name; None: not a transformer part."""
    if name.startswith(KOHYA_PREFIX):
        stem = kohya.get(name)
        return ("bfl", stem) if stem is not None else None
    for prefix in DIFFUSERS_PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :] in modules:
            return ("diffusers", name[len(prefix) :])
    for prefix in BFL_PREFIXES:
        stem = name[len(prefix) :] if name.startswith(prefix) else None
        if stem and flux_keys.is_transformer_key(stem):
            return ("bfl", stem)
    return None


def _bfl_targets(stem: str, delta: torch.Tensor, hidden: int) -> dict[str, torch.Tensor]:
    """diffusers module name -> its part of a BFL-shaped delta."""
    try:
        mapped = flux_keys.bfl_to_diffusers({stem + ".weight": delta}, hidden)
    except flux_keys.UnmappedKey as err:
        raise BadRequest(f"LoRA targets unknown Flux module {stem!r}") from err
    return {key[: -len(".weight")]: value for key, value in mapped.items()}


def apply_flux_networks(transformer: torch.nn.Module, loaded: Sequence[LoadedNetwork]) -> NetworkPatch:
    """Merge every network's transformer parts (multiplier: the call's unet weight)."""
    patch = NetworkPatch()
    modules = dict(transformer.named_modules())
    config: Any = transformer.config  # a diffusers config, attributes by model
    hidden = int(config.num_attention_heads) * int(config.attention_head_dim)
    kohya = {KOHYA_PREFIX + stem.replace(".", "_"): stem for stem in bfl_linear_stems(config)}
    try:
        for network in loaded:
            skipped = 0
            for group, parts in network.groups.items():
                target = resolve_group(group, kohya, modules)
                if target is None:
                    skipped += 1
                    continue
                _merge(patch, modules, target, parts, network, hidden)
            if skipped:
                log.warning("LoRA %s: %d groups outside the Flux transformer were not applied (text encoders)",
                            network.call.name, skipped)
    except Exception:
        patch.restore()
        raise
    return patch


def _merge(
    patch: NetworkPatch, modules: Mapping[str, torch.nn.Module], target: tuple[str, str],
    parts: Mapping[str, torch.Tensor], network: LoadedNetwork, hidden: int,
) -> None:
    kind, name = target
    up = parts.get("lora_up.weight", parts.get("lora_B.weight"))
    down = parts.get("lora_down.weight", parts.get("lora_A.weight"))
    if up is None or down is None:
        raise BadRequest(f"LoRA {network.call.name}: {name} needs lora_up/lora_down (or lora_A/lora_B)")
    shape = torch.zeros(()).expand(up.shape[0], down.shape[-1])  # the BFL weight's shape, no memory
    try:
        delta = lora_delta(parts, shape, network.call.dyn_dim) * network.call.unet_multiplier
    except ValueError as err:
        raise BadRequest(f"LoRA {network.call.name}: {name} {err}") from err
    pieces = _bfl_targets(name, delta, hidden) if kind == "bfl" else {name: delta}
    for module_name, piece in pieces.items():
        module = modules.get(module_name)
        weight = None if module is None else weight_of(module)
        if module is None or weight is None or tuple(weight.shape) != tuple(piece.shape):
            raise BadRequest(f"LoRA {network.call.name} does not fit this Flux model at {module_name}")
        patch.backup(module)
        with torch.no_grad():
            weight.add_(piece.to(weight.device, weight.dtype))

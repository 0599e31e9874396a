"""LoRA for the flow transformers (Flux, SD3): what every key format and both families share.

A LoRA names a layer in one of three ways:
- Kohya / sd-scripts / Forge: `lora_unet_<native module with "." as "_">` (`.lora_down`, `.lora_up`,
  `.alpha`), where "native" is the layout of the original checkpoint (BFL's for Flux, Stability's
  MMDiT for SD3);
- the native name itself, bare or under `diffusion_model.` / `model.diffusion_model.` (BFL,
  ai-toolkit, ComfyUI saves; `lora_A` / `lora_B`);
- diffusers / PEFT: `transformer.<diffusers module>.lora_A.weight`.

A native delta is computed at the native shape (a fused qkv, Flux's single-block linear1) and then
split into diffusers' modules by the same key map the family's loader uses, so it lands on exactly
the rows the checkpoint's weights did. Text-encoder layers (`lora_te1_` CLIP-L, `lora_te2_` CLIP-G,
`lora_te3_` T5, or PEFT `text_encoder*.`) are merged with the te multiplier. A layer that matches
nothing is logged and skipped, as A1111 does ("Network ... didn't match keys"); a layer that matches
but does not fit is a 400. Weights are restored bit exactly after the job (NetworkPatch keeps copies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from webui_api.engine.networks import (
    DeltaLayer,
    LoadedNetwork,
    NetworkPatch,
    Target,
    lora_delta,
    patch_module,
    text_targets,
    weight_of,
)
from webui_api.engine.storage import FLOAT8_DTYPES
from webui_api.errors import BadRequest

log = logging.getLogger(__name__)

KOHYA_PREFIX = "lora_unet_"
NATIVE_PREFIXES = ("diffusion_model.", "model.diffusion_model.", "")
DIFFUSERS_PREFIXES = ("transformer.", "base_model.model.")
UNMATCHED_SHOWN = 5  # how many unmatched layer names the log line names


@dataclass(frozen=True)
class FamilyLoraKeys:
    """What one family contributes: its native Linear names, how to recognise a native name, and
    how a delta at a native module splits into diffusers modules ({module name: delta rows})."""

    family: str
    native_stems: Sequence[str]
    is_native: Callable[[str], bool]
    to_diffusers: Callable[[str, torch.Tensor], dict[str, torch.Tensor]]
    text_slots: Sequence[tuple[str, tuple[str, ...], bool]]  # (model attribute, kohya prefixes, is CLIP)


def resolve_group(
    name: str, keys: FamilyLoraKeys, kohya: Mapping[str, str], modules: Mapping[str, torch.nn.Module]
) -> tuple[str, str] | None:
    """("native" | "diffusers", module name) for a LoRA group name; None: not a transformer layer."""
    if name.startswith(KOHYA_PREFIX):
        stem = kohya.get(name)
        return ("native", stem) if stem is not None else None
    for prefix in DIFFUSERS_PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :] in modules:
            return ("diffusers", name[len(prefix) :])
    for prefix in NATIVE_PREFIXES:
        stem = name[len(prefix) :] if name.startswith(prefix) else None
        if stem and keys.is_native(stem):
            return ("native", stem)
    return None


def t5_targets(encoder: torch.nn.Module, slot: str, prefixes: Sequence[str]) -> dict[str, Target]:
    """A T5 encoder's Linear layers by kohya name (module path with "_") and PEFT name."""
    targets: dict[str, Target] = {}
    for path, module in encoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            for prefix in prefixes:
                targets[prefix + path.replace(".", "_")] = Target(module, True)
            targets[f"{slot}.{path}"] = Target(module, True)
    return targets


def flow_text_targets(model: Any, keys: FamilyLoraKeys) -> dict[str, Target]:
    """Every name a LoRA may use for a layer of the model's text encoders."""
    targets: dict[str, Target] = {}
    for slot, prefixes, is_clip in keys.text_slots:
        encoder = getattr(model, slot, None)
        if isinstance(encoder, torch.nn.Module):
            found = text_targets(encoder, slot, prefixes) if is_clip else t5_targets(encoder, slot, prefixes)
            targets.update(found)
    return targets


def apply_flow_networks(model: Any, loaded: Sequence[LoadedNetwork], keys: FamilyLoraKeys) -> NetworkPatch:
    """Merge every network into the model's transformer (unet multiplier) and text encoders
    (te multiplier); on any failure the weights are restored before the error propagates."""
    patch = NetworkPatch()
    if not loaded:
        return patch
    transformer = model.unet
    modules = dict(transformer.named_modules())
    kohya = {KOHYA_PREFIX + stem.replace(".", "_"): stem for stem in keys.native_stems}
    text = flow_text_targets(model, keys)
    try:
        with torch.no_grad():
            for network in loaded:
                _apply_one(patch, network, keys, kohya, modules, text)
    except BaseException:
        patch.restore()
        raise
    return patch


def _apply_one(
    patch: NetworkPatch, network: LoadedNetwork, keys: FamilyLoraKeys, kohya: Mapping[str, str],
    modules: Mapping[str, torch.nn.Module], text: Mapping[str, Target],
) -> None:
    unmatched: list[str] = []
    for group, parts in network.groups.items():
        target = resolve_group(group, keys, kohya, modules)
        if target is not None:
            _merge(patch, modules, target, parts, network, keys)
        elif group in text:
            patch_module(network, group, parts, text[group], patch)
        else:
            unmatched.append(group)
    if unmatched:
        log.warning("LoRA %s: %d layers match nothing in this %s model and were skipped, e.g. %s",
                    network.call.name, len(unmatched), keys.family, unmatched[:UNMATCHED_SHOWN])


def _merge(
    patch: NetworkPatch, modules: Mapping[str, torch.nn.Module], target: tuple[str, str],
    parts: Mapping[str, torch.Tensor], network: LoadedNetwork, keys: FamilyLoraKeys,
) -> None:
    kind, name = target
    up = parts.get("lora_up.weight", parts.get("lora_B.weight"))
    down = parts.get("lora_down.weight", parts.get("lora_A.weight"))
    if up is None or down is None:
        raise BadRequest(f"LoRA {network.call.name}: {name} needs lora_up/lora_down (or lora_A/lora_B)")
    shape = torch.zeros(()).expand(up.shape[0], down.shape[-1])  # the native weight's shape, no memory
    try:
        delta = lora_delta(parts, shape, network.call.dyn_dim) * network.call.unet_multiplier
    except ValueError as err:
        raise BadRequest(f"LoRA {network.call.name}: {name} {err}") from err
    pieces = keys.to_diffusers(name, delta) if kind == "native" else {name: delta}
    for module_name, piece in pieces.items():
        module = modules.get(module_name)
        if isinstance(module, DeltaLayer):  # GGUF-packed: added after decoding, at call time
            _add_call_time_delta(patch, module, piece, network, keys, module_name)
            continue
        weight = None if module is None else weight_of(module)
        if module is None or weight is None or weight.numel() != piece.numel() or weight.shape[0] != piece.shape[0]:
            raise BadRequest(f"LoRA {network.call.name} does not fit this {keys.family} model at {module_name}")
        patch.backup(module)  # a patch-embedding conv gets its flattened delta reshaped
        add_delta_in_place(weight, piece.reshape(weight.shape))


def add_delta_in_place(weight: torch.Tensor, delta: torch.Tensor) -> None:
    """weight += delta. A float8-stored weight (forge_unet_storage_dtype) has no arithmetic of its
    own: the sum is taken in float32 and rounded back to float8, as Forge's LoraLoader merges
    (merge_lora_to_weight with computation_dtype float32, then cast to the stored dtype). The
    NetworkPatch backup holds the float8 original, so restore() is bit exact."""
    delta = delta.to(weight.device)
    if weight.dtype in FLOAT8_DTYPES:
        weight.copy_((weight.to(torch.float32) + delta.to(torch.float32)).to(weight.dtype))
    else:
        weight.add_(delta.to(weight.dtype))


def _add_call_time_delta(
    patch: NetworkPatch, layer: DeltaLayer, piece: torch.Tensor, network: LoadedNetwork, keys: FamilyLoraKeys,
    module_name: str,
) -> None:
    shape = (int(getattr(layer, "out_features", -1)), int(getattr(layer, "in_features", -1)))
    if piece.shape[0] != shape[0] or piece.numel() != shape[0] * shape[1]:
        raise BadRequest(f"LoRA {network.call.name} does not fit this {keys.family} model at {module_name}")
    patch.add_delta(layer, piece.reshape(shape))

"""LoRA / LoCon networks: the `<lora:name:weight>` prompt tags, A1111-style.

- `parse_prompt_networks` strips every `<kind:args>` tag from a prompt (A1111's extra-network
  syntax; only positive prompts carry them) and `lora_calls` turns the lora/lyco tags into
  `NetworkCall`s with A1111's argument rules: `<lora:name>`, `<lora:name:w>`,
  `<lora:name:te_w:unet_w>`, `<lora:name:te_w:unet_w:dyn>`, and the named forms `te=`,
  `unet=`, `dyn=`.
- `NetworkLibrary` lists the files of the Lora and LyCORIS folders (/sdapi/v1/loras items:
  name, alias = `ss_output_name` from the metadata, path, metadata) and finds them by name
  or alias.
- `apply_networks` merges the networks into the model's weights for one job and returns a
  `NetworkPatch` whose `restore()` copies the original weights back, so the next job runs on
  exactly the weights it would have had (bit for bit).

Key formats: kohya / A1111 (`lora_unet_<module>`, `lora_te_`, `lora_te1_`, `lora_te2_` with
`.lora_down/.lora_up/.lora_mid/.alpha`), where <module> is either the diffusers module path
(SD1 LoRAs) or the original layout's (SDXL LoRAs), with "." written as "_"; and diffusers /
PEFT (`unet.<module>.lora_A/B.weight`, `text_encoder.`, `text_encoder_2.`). Conv LoRA
(LoCon) and its CP-decomposed form (`lora_mid`) included. Other LyCORIS kinds (LoHa, LoKr,
IA3, OFT, full diffs) and DoRA are refused with a message rather than half applied.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

import torch

from webui_api.engine.loading import ldm_keys
from webui_api.engine.loading.discovery import ModelPaths, network_files
from webui_api.engine.loading.files import UnusableModelFile, is_safetensors, read_safetensors_metadata, read_state_dict
from webui_api.engine.loading.hashes import ADDNET_SECTION, CHECKPOINT_SECTION, HashCache
from webui_api.errors import NotFound

log = logging.getLogger(__name__)

EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")  # A1111's re_extra_net
LORA_KINDS = ("lora", "lyco")
METADATA_ORDER = {  # A1111 shows these metadata keys first, in this order
    "ss_sd_model_name": 1,
    "ss_resolution": 2,
    "ss_clip_skip": 3,
    "ss_num_train_images": 10,
    "ss_tag_frequency": 20,
}
FORBIDDEN_ALIASES = ("none", "addams")  # A1111 never resolves these as aliases
CACHED_FILES = 4  # LoRA state dicts kept in RAM between jobs
NETWORK_PARTS = ("lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "lora_A.weight", "lora_B.weight")


# ---------------------------------------------------------------------------
# Prompt tags
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One `<kind:arg1:arg2:...>` tag; `named` holds the `key=value` arguments."""

    kind: str
    positional: tuple[str, ...]
    named: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, kind: str, text: str) -> ExtraNetworkTag:
        positional, named = [], []
        for item in text.split(":"):
            key, sep, value = item.partition("=")
            if sep:
                named.append((key, value))
            else:
                positional.append(item)
        return cls(kind, tuple(positional), tuple(named))


def parse_prompt_networks(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """The prompt without its extra-network tags, and the tags in prompt order."""
    tags: list[ExtraNetworkTag] = []

    def found(match: re.Match[str]) -> str:
        tags.append(ExtraNetworkTag.parse(match[1], match[2]))
        return ""

    return EXTRA_NETWORK_TAG.sub(found, prompt), tags


@dataclass(frozen=True)
class NetworkCall:
    """One LoRA to apply: the name as written and its text-encoder / UNet weights."""

    name: str
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None


def _number(tag: ExtraNetworkTag, index: int, key: str, default: Any, kind: type) -> Any:
    named = dict(tag.named)
    raw = named.get(key, tag.positional[index] if len(tag.positional) > index else None)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError as err:
        return raise_bad_tag(tag, f"{key} must be a number, got {raw!r}", err)


def raise_bad_tag(tag: ExtraNetworkTag, reason: str, err: Exception | None = None) -> NoReturn:
    from webui_api.errors import BadRequest

    text = ":".join(tag.positional + tuple(f"{k}={v}" for k, v in tag.named))
    raise BadRequest(f"Invalid <{tag.kind}:{text}> in the prompt: {reason}") from err


def lora_calls(tags: Iterable[ExtraNetworkTag]) -> list[NetworkCall]:
    """A1111's reading of lora/lyco tags: te weight defaults to 1, unet weight to te's."""
    calls = []
    for tag in tags:
        if tag.kind not in LORA_KINDS:
            log.warning("Skipping unknown extra network: %s", tag.kind)
            continue
        if not tag.positional or not tag.positional[0]:
            raise_bad_tag(tag, "a network name is required")
        te = _number(tag, 1, "te", 1.0, float)
        unet = _number(tag, 2, "unet", te, float)
        calls.append(NetworkCall(tag.positional[0], te, unet, _number(tag, 3, "dyn", None, int)))
    return calls


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkFile:
    """One /sdapi/v1/loras entry."""

    name: str
    alias: str
    filename: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def api_item(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "path": self.filename, "metadata": dict(self.metadata)}


def describe_network(path: Path) -> NetworkFile:
    """A LoRA file's entry: metadata (safetensors only) in A1111's display order."""
    metadata: dict[str, Any] = {}
    if is_safetensors(path):
        try:
            metadata = read_safetensors_metadata(path)
        except UnusableModelFile as err:
            log.warning("Reading LoRA metadata failed: %s", err.detail)
    ordered = dict(sorted(metadata.items(), key=lambda item: METADATA_ORDER.get(item[0], 999)))
    name = path.stem
    return NetworkFile(name, str(ordered.get("ss_output_name") or name), str(path), ordered)


class NetworkLibrary:
    """The LoRA files of the Lora / LyCORIS folders, rescanned on `refresh`; readers on
    other threads see an immutable tuple."""

    def __init__(self, paths: ModelPaths, hashes: HashCache) -> None:
        self.paths = paths
        self.hashes = hashes
        self._files: tuple[NetworkFile, ...] = ()
        self._states: OrderedDict[tuple[str, float], dict[str, torch.Tensor]] = OrderedDict()
        self.refresh()

    def refresh(self) -> None:
        entries: dict[str, NetworkFile] = {}
        for path in network_files(self.paths):
            entries[path.stem] = describe_network(path)  # a later file with the same name wins, as in A1111
        self._files = tuple(entries.values())

    def files(self) -> list[NetworkFile]:
        return list(self._files)

    def find(self, name: str) -> NetworkFile:
        """By file name, else by alias; a 404 when neither names a file."""
        entry = self.lookup(name)
        if entry is None:
            raise NotFound(
                f"LoRA {name!r} not found; GET /sdapi/v1/loras lists the names and aliases available",
                errors=f"LoRA {name!r} not found",
            )
        return entry

    def lookup(self, name: str) -> NetworkFile | None:
        """By file name, else by alias (A1111: an alias two files share resolves to neither)."""
        for entry in self._files:
            if entry.name == name:
                return entry
        matches = [e for e in self._files if e.alias == name and name.lower() not in FORBIDDEN_ALIASES]
        return matches[0] if len(matches) == 1 else None

    def shorthash(self, entry: NetworkFile) -> str:
        """The 12-digit hash "Lora hashes" shows: metadata's sshs_model_hash, else the addnet
        hash (safetensors) or the sha256 (pickles), cached in cache.json."""
        stored = entry.metadata.get("sshs_model_hash")
        if isinstance(stored, str) and stored:
            return stored[:12]
        section = ADDNET_SECTION if is_safetensors(Path(entry.filename)) else CHECKPOINT_SECTION
        value = self.hashes.sha256(Path(entry.filename), f"lora/{entry.name}", section)
        return value[:12] if value else ""

    def state_dict(self, entry: NetworkFile, allow_unsafe_pickle: bool) -> dict[str, torch.Tensor]:
        """The file's tensors, from a small in-RAM cache keyed by path and mtime."""
        key = (entry.filename, os.path.getmtime(entry.filename))
        if key not in self._states:
            self._states[key] = read_state_dict(Path(entry.filename), allow_unsafe_pickle=allow_unsafe_pickle)
            while len(self._states) > CACHED_FILES:
                self._states.popitem(last=False)
        self._states.move_to_end(key)
        return self._states[key]


# ---------------------------------------------------------------------------
# Which model module a network key targets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A weight-carrying module of the model and whether it belongs to a text encoder."""

    module: torch.nn.Module
    is_text: bool


def _unet_names(unet: Any) -> dict[str, str]:
    """diffusers module path -> the same module's original-layout path (both without .weight)."""
    layout = ldm_keys.UNetLayout.from_config(unet.config)
    names = {}
    for key in unet.state_dict():
        if key.endswith(".weight"):
            module = key[: -len(".weight")]
            original = ldm_keys.unet_key_to_ldm(key, layout)[len(ldm_keys.UNET_PREFIX) : -len(".weight")]
            names[module] = original
    return names


def network_targets(model: Any) -> dict[str, Target]:
    """Every name a LoRA key may use for a module of `model` -> that module."""
    modules = dict(model.unet.named_modules())
    targets: dict[str, Target] = {}
    for path, original in _unet_names(model.unet).items():
        target = Target(modules[path], False)
        targets["lora_unet_" + path.replace(".", "_")] = target
        targets["lora_unet_" + original.replace(".", "_")] = target
        targets["unet." + path] = target
    slots = (("text_encoder", ("lora_te_", "lora_te1_")), ("text_encoder_2", ("lora_te2_",)))
    for slot, prefixes in slots:
        encoder = getattr(model, slot, None)
        if encoder is not None:
            targets.update(text_targets(encoder, slot, prefixes))
    return targets


def text_targets(encoder: torch.nn.Module, slot: str, prefixes: Sequence[str]) -> dict[str, Target]:
    """The names a LoRA may use for a CLIP text encoder's layers (kohya `lora_te*_`, PEFT `slot.`)."""
    targets = {}
    for path, module in encoder.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        canonical = ldm_keys.canonical_text_key(path + ".weight")[: -len(".weight")]
        for prefix in prefixes:
            targets[prefix + canonical.replace(".", "_")] = Target(module, True)
        targets[f"{slot}.{canonical}"] = Target(module, True)
        targets[f"{slot}.{path}"] = Target(module, True)
    return targets


def group_network_keys(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {part: tensor}}: "lora_unet_x.lora_down.weight" -> ("lora_unet_x", part)."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for part in NETWORK_PARTS:
            if key.endswith("." + part):
                groups.setdefault(key[: -len(part) - 1], {})[part] = tensor
                break
        else:
            groups.setdefault(key.rpartition(".")[0] if "." in key else key, {})[key.rpartition(".")[2]] = tensor
    return groups


# ---------------------------------------------------------------------------
# Weight deltas
# ---------------------------------------------------------------------------


def lora_delta(parts: Mapping[str, torch.Tensor], weight: torch.Tensor, dyn_dim: int | None) -> torch.Tensor:
    """up @ down (through `mid` for CP-decomposed convolutions) * alpha / rank, in float32,
    shaped like `weight`."""
    up = parts.get("lora_up.weight", parts.get("lora_B.weight"))
    down = parts.get("lora_down.weight", parts.get("lora_A.weight"))
    if up is None or down is None:
        raise ValueError(f"needs lora_up/lora_down (or lora_A/lora_B); found {sorted(parts)}")
    up2d = up.to(weight.device, torch.float32).reshape(up.shape[0], -1)
    down2d = down.to(weight.device, torch.float32).reshape(down.shape[0], -1)
    if dyn_dim is not None:
        up2d, down2d = up2d[:, :dyn_dim], down2d[:dyn_dim]
    mid = parts.get("lora_mid.weight")
    if mid is not None:
        delta = torch.einsum("nmkl,in,mj->ijkl", mid.to(weight.device, torch.float32), up2d, down2d)
    else:
        delta = up2d @ down2d
    if delta.numel() != weight.numel():
        raise ValueError(f"gives {tuple(delta.shape)} for a weight of shape {tuple(weight.shape)}")
    alpha = parts.get("alpha")
    scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
    return delta.reshape(weight.shape) * scale


UNSUPPORTED_PARTS = {
    "hada_w1_a": "LoHa",
    "lokr_w1": "LoKr",
    "lokr_w1_a": "LoKr",
    "weight": "IA3",
    "oft_blocks": "OFT",
    "oft_diag": "OFT",
    "diff": "full-weight diff",
    "dora_scale": "DoRA",
    "w_norm": "norm",
}


def _unsupported_kind(parts: Mapping[str, Any]) -> str | None:
    return next((kind for part, kind in UNSUPPORTED_PARTS.items() if part in parts), None)


# ---------------------------------------------------------------------------
# Applying and restoring
# ---------------------------------------------------------------------------


def weight_of(module: torch.nn.Module) -> torch.Tensor:
    """The `weight` parameter of a Linear/Conv layer (typed: nn.Module attributes are not)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


@runtime_checkable
class DeltaLayer(Protocol):
    """A layer whose weight cannot be changed in place (GGUF-packed): a LoRA is added at call time."""

    def add_weight_delta(self, delta: torch.Tensor) -> None: ...

    def clear_weight_delta(self) -> None: ...


@dataclass
class NetworkPatch:
    """The original weights of every module a job's networks changed; `restore()` puts them
    back exactly (copies, not subtraction, so no rounding is left behind) and drops the deltas
    given to layers that add them at call time."""

    backups: list[tuple[torch.nn.Module, torch.Tensor]] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # "Lora hashes": mentioned name -> shorthash
    delta_layers: list[DeltaLayer] = field(default_factory=list)

    def restore(self) -> None:
        with torch.no_grad():
            for module, original in reversed(self.backups):
                weight_of(module).copy_(original)
        self.backups.clear()
        for layer in self.delta_layers:
            layer.clear_weight_delta()
        self.delta_layers.clear()

    def add_delta(self, layer: DeltaLayer, delta: torch.Tensor) -> None:
        layer.add_weight_delta(delta)
        if not any(existing is layer for existing in self.delta_layers):
            self.delta_layers.append(layer)

    def backup(self, module: torch.nn.Module) -> None:
        if not any(existing is module for existing, _ in self.backups):
            self.backups.append((module, weight_of(module).detach().clone()))


@dataclass(frozen=True)
class LoadedNetwork:
    """A network's file entry and its tensors grouped by target module name."""

    call: NetworkCall
    entry: NetworkFile
    groups: Mapping[str, Mapping[str, torch.Tensor]]


def apply_networks(model: Any, loaded: Sequence[LoadedNetwork]) -> NetworkPatch:
    """Merge each network into `model`'s weights; on any failure the weights are restored
    before the error propagates."""
    patch = NetworkPatch()
    if not loaded:
        return patch
    targets = network_targets(model)
    try:
        for network in loaded:
            _apply_one(network, targets, patch)
    except BaseException:
        patch.restore()
        raise
    return patch


def _apply_one(network: LoadedNetwork, targets: Mapping[str, Target], patch: NetworkPatch) -> None:
    matched, unmatched = 0, []
    with torch.no_grad():
        for name, parts in network.groups.items():
            target = targets.get(name)
            if target is None:
                unmatched.append(name)
                continue
            patch_module(network, name, parts, target, patch)
            matched += 1
    if not matched:
        raise UnusableModelFile(
            network.entry.filename,
            f"none of its {len(network.groups)} layers match this model (is it for another architecture?), "
            f"e.g. {unmatched[:2]}",
        )
    if unmatched:
        log.info(
            "LoRA %s: %d layers do not match this model, e.g. %s", network.entry.name, len(unmatched), unmatched[:3]
        )


def patch_module(
    network: LoadedNetwork, name: str, parts: Mapping[str, torch.Tensor], target: Target, patch: NetworkPatch
) -> None:
    """Merge one layer's LoRA into `target` (weight: te or unet multiplier), backing it up first."""
    kind = _unsupported_kind(parts)
    if kind is not None:
        raise UnusableModelFile(network.entry.filename, f"{kind} networks are not supported (layer {name})")
    weight = weight_of(target.module)
    try:
        delta = lora_delta(parts, weight, network.call.dyn_dim)
    except ValueError as err:
        raise UnusableModelFile(network.entry.filename, f"layer {name}: {err}") from err
    multiplier = network.call.te_multiplier if target.is_text else network.call.unet_multiplier
    patch.backup(target.module)
    merged = weight.detach().to(torch.float32) + delta * multiplier
    weight.copy_(merged.to(weight.dtype))


# ---------------------------------------------------------------------------
# Networks per pass (hires fix)
# ---------------------------------------------------------------------------


@dataclass
class PassNetworks:
    """The networks merged into every model of one job, per pass.

    A1111 activates the prompt's networks before each batch's first pass and the hires
    prompt's own networks (`hr_extra_network_data`) before its second pass. Every model the
    job samples with is attached once: the main model strictly (a network none of whose
    layers match is an error), companions leniently (skipped, as for the SDXL refiner).
    `select` switches the merged set by restoring the exact original weights first, so each
    pass (and the next job) sees the weights it would have had, bit for bit; switching to
    the set already merged does nothing (the common case: no hr_prompt, or the same tags).
    """

    first: Sequence[LoadedNetwork] = ()
    hires: Sequence[LoadedNetwork] | None = None
    _models: list[tuple[Any, bool]] = field(default_factory=list)
    _patches: list[NetworkPatch] = field(default_factory=list)
    _hires_active: bool = False

    def active(self) -> Sequence[LoadedNetwork]:
        return self.hires if self._hires_active and self.hires is not None else self.first

    def attach(self, model: Any, strict: bool) -> None:
        """Merge the active set into `model` (once per model) and remember it for switches."""
        if any(existing is model for existing, _ in self._models):
            return
        self._models.append((model, strict))
        self._apply(model, strict)

    def select(self, is_hires: bool) -> None:
        """Make the first pass's (False) or the hires pass's (True) networks the merged set."""
        if is_hires == self._hires_active:
            return
        before = [n.call for n in self.active()]
        self._hires_active = is_hires
        if [n.call for n in self.active()] == before:
            return
        self._undo_patches()
        for model, strict in self._models:
            self._apply(model, strict)

    def restore(self) -> None:
        """Every attached model back to its original weights."""
        self._undo_patches()
        self._models.clear()
        self._hires_active = False

    def mentioned(self) -> list[LoadedNetwork]:
        """Both passes' networks, first pass first, each mentioned name once (A1111's
        lora_hashes dict grows during the hires pass)."""
        seen: dict[str, LoadedNetwork] = {}
        for network in [*self.first, *(self.hires or ())]:
            seen[network.call.name] = network
        return list(seen.values())

    def _apply(self, model: Any, strict: bool) -> None:
        networks = self.active()
        if strict:
            self._patches.append(apply_networks(model, networks))
            return
        for network in networks:
            try:
                self._patches.append(apply_networks(model, [network]))
            except UnusableModelFile as err:
                log.info(
                    "LoRA not applied to %s: %s", getattr(getattr(model, "info", None), "title", model), err.detail
                )

    def _undo_patches(self) -> None:
        for patch in reversed(self._patches):
            patch.restore()
        self._patches.clear()

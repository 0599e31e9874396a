"""Module offloading: A1111's --medvram, --medvram-sdxl and --lowvram as plans of which modules
live on the device, and when.

A1111 (modules/lowvram.py) keeps a model's big parts in CPU RAM and moves one of them to the
GPU right before it runs, sending the previous one back, so at most one "swap unit" occupies
VRAM at a time:

- ``--medvram``: the units are whole networks: text encoder(s) (SD3's T5-XXL too), UNet, VAE.
- ``--lowvram``: the text encoders and VAE as whole networks, and the UNet split into its
  blocks (time embedding, each input block, the middle block, each output block); what is
  left of the UNet (the small convolutions and embeddings around the blocks) stays on the GPU.
- ``--medvram-sdxl``: ``--medvram``, for SDXL checkpoints only.
- ``--lowvram`` wins over ``--medvram`` (A1111 calls ``setup_for_low_vram(model, not lowvram)``).

An `OffloadPlan` names the units for a model (testable without a GPU); `ModuleSwapper` carries
it out with forward pre-hooks. The mover is injectable so tests can record every move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

VRAM_MODES = ("normal", "medvram", "medvram-sdxl", "lowvram")
CPU = torch.device("cpu")
Mover = Callable[[torch.nn.Module, torch.device], None]


def _move(module: torch.nn.Module, device: torch.device) -> None:
    module.to(device)


@dataclass(frozen=True)
class OffloadPlan:
    """How a model's modules share the device: "none", "model" (whole networks) or "block"."""

    granularity: str

    @classmethod
    def for_mode(cls, vram_mode: str, family: str) -> OffloadPlan:
        """The plan A1111 applies for a --*vram mode to a model of `family` ("sd1", "sdxl", ...)."""
        if vram_mode not in VRAM_MODES:
            raise ValueError(f"vram mode must be one of {VRAM_MODES}, got {vram_mode!r}")
        if vram_mode == "lowvram":
            return cls("block")
        if vram_mode == "medvram" or (vram_mode == "medvram-sdxl" and family.startswith("sdxl")):
            return cls("model")
        return cls("none")

    @property
    def offloads(self) -> bool:
        return self.granularity != "none"

    def swap_units(self, parts: dict[str, torch.nn.Module]) -> list[tuple[str, torch.nn.Module]]:
        """The (name, module) pairs that take turns on the device, in the order a generation
        first uses them. `parts` is LoadedModel.modules() ({"unet": ..., "vae": ..., ...})."""
        if not self.offloads:
            return []
        units: list[tuple[str, torch.nn.Module]] = []
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):  # _3: SD3's T5-XXL
            if parts.get(name) is not None:
                units.append((name, parts[name]))
        unet = parts["unet"]
        units += _unet_blocks(unet) if self.granularity == "block" else [("unet", unet)]
        vae = parts.get("vae")
        if vae is not None:
            units += [(f"vae.{half}", getattr(vae, half)) for half in ("encoder", "decoder") if hasattr(vae, half)]
        return units


def _unet_blocks(unet: Any) -> list[tuple[str, torch.nn.Module]]:
    """A diffusers UNet's big blocks, in execution order (A1111's DiffModelMover list)."""
    blocks: list[tuple[str, torch.nn.Module | None]] = [("unet.time_embedding", unet.time_embedding)]
    blocks += [(f"unet.down_blocks.{i}", block) for i, block in enumerate(unet.down_blocks)]
    blocks.append(("unet.mid_block", unet.mid_block))
    blocks += [(f"unet.up_blocks.{i}", block) for i, block in enumerate(unet.up_blocks)]
    return [(name, module) for name, module in blocks if module is not None]


@dataclass
class ModuleSwapper:
    """Carries out a plan: every swap unit waits in CPU RAM until its forward runs; then it
    moves to the device and the unit that was there goes back (one unit resident at a time)."""

    device: torch.device
    mover: Mover = _move
    resident: str | None = None  # the name of the unit on the device now
    _units: dict[str, torch.nn.Module] = field(default_factory=dict)
    _hooks: list[Any] = field(default_factory=list)

    def install(self, parts: dict[str, torch.nn.Module], plan: OffloadPlan) -> None:
        """Everything but the swap units to the device, the units to CPU RAM, hooks on the units."""
        self.remove()
        units = plan.swap_units(parts)
        unit_ids = {id(module) for _, module in units}
        for module in parts.values():
            _move_rest(module, unit_ids, self.device, self.mover)
        for name, module in units:
            self.mover(module, CPU)
            self._units[name] = module
            self._hooks.append(module.register_forward_pre_hook(self._pre_hook(name)))

    def _pre_hook(self, name: str) -> Callable[..., None]:
        def bring_to_device(_module: torch.nn.Module, _args: Any) -> None:
            self.activate(name)

        return bring_to_device

    def activate(self, name: str) -> None:
        """Make `name` the resident unit (called by the hooks; public for callers such as VAE
        encode/decode whose entry point is not forward)."""
        if self.resident == name:
            return
        if self.resident is not None:
            self.mover(self._units[self.resident], CPU)
        self.mover(self._units[name], self.device)
        self.resident = name

    def remove(self) -> None:
        """Drop the hooks and send the resident unit back (before a model is parked or unloaded)."""
        for hook in self._hooks:
            hook.remove()
        if self.resident is not None:
            self.mover(self._units[self.resident], CPU)
        self._hooks.clear()
        self._units.clear()
        self.resident = None


def _move_rest(module: torch.nn.Module, unit_ids: set[int], device: torch.device, mover: Mover) -> None:
    """Move `module`'s own parameters/buffers and children to `device`, skipping swap units."""
    if id(module) in unit_ids:
        return
    if not any(id(m) in unit_ids for m in module.modules()):
        mover(module, device)
        return
    for child in module.children():
        _move_rest(child, unit_ids, device, mover)
    for param in module.parameters(recurse=False):
        param.data = param.data.to(device)
    for key, buffer in module.named_buffers(recurse=False):
        module._buffers[key] = buffer.to(device)

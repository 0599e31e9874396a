"""Text encoders parked in CPU RAM between a job's prompt encoding and the next one
(--offload-text-encoders auto|always|never), as Forge does for Flux and SD3.

T5-XXL alone is about 9.5 GB in bf16: on a card that holds the transformer and the VAE with
little room to spare, keeping the encoders resident through sampling and decoding leaves too
little for the activations. Forge unloads them once the prompt is encoded when the device lacks
room for the next model's working set; we decide the same per encode:

- never on a CPU device (there is nowhere to move them to);
- never ourselves when the --medvram/--lowvram plan already swaps them (engine.offload): its
  hooks move them, and a second mover would fight them;
- "always" / "never" as asked;
- "auto": park when the device's free memory, measured after encoding, is below what sampling
  and decoding still need: the transformer and VAE bytes not yet on the device plus a margin
  for the activations.

The decision is a pure function (tested without a GPU); `TextEncoderParking` applies it around
a family's encode and moves the encoders with the transfer plan's mover (pinned memory and
non-blocking uploads on CUDA, engine.transfers). Whether the encoders are parked is read from
where their weights are, not kept in a flag, so a model moved by the store stays consistent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch

from webui_api.engine.models import LoadedModel
from webui_api.engine.offload import CPU, Mover

TEXT_ENCODER_OFFLOAD_MODES = ("auto", "always", "never")
# Room kept free for sampling and decoding activations in "auto": Flux/SD3 at 1024x1024 with
# scaled-dot-product attention peak around 2-3 GB above the weights, most of it in the VAE decode.
DEFAULT_MARGIN_BYTES = 3 * 1024**3
FreeMemoryProbe = Callable[[torch.device], int]  # bytes the device can still hand out


def move_module(module: torch.nn.Module, device: torch.device) -> None:
    """The plain mover (tests and CPU engines); the store passes its transfer plan's."""
    module.to(device)


class ParkDecision(enum.Enum):
    KEEP = "keep"  # the encoders stay on the device
    PARK = "park"  # moved to CPU RAM after encoding, back before the next encode
    BY_PLAN = "by-plan"  # --medvram/--lowvram's swapper moves them already


def check_offload_mode(mode: str) -> str:
    """`mode` if it is one of TEXT_ENCODER_OFFLOAD_MODES, else a ValueError naming them."""
    if mode not in TEXT_ENCODER_OFFLOAD_MODES:
        raise ValueError(
            f"--offload-text-encoders must be one of {', '.join(TEXT_ENCODER_OFFLOAD_MODES)}, got {mode!r}"
        )
    return mode


def decide_parking(
    device_type: str, free_bytes: int, encoder_bytes: int, pending_bytes: int, margin_bytes: int,
    mode: str = "auto", offloaded_by_plan: bool = False,
) -> ParkDecision:
    """Whether to park the text encoders after encoding (see the module docstring).

    `free_bytes`: the device's free memory with the encoders still on it; `encoder_bytes`: their
    weights; `pending_bytes`: transformer + VAE weights that sampling and decoding will still
    bring onto the device (0 when resident); `margin_bytes`: room for the activations."""
    check_offload_mode(mode)
    if device_type == "cpu" or encoder_bytes <= 0:
        return ParkDecision.KEEP
    if offloaded_by_plan:
        return ParkDecision.BY_PLAN
    if mode != "auto":
        return ParkDecision.PARK if mode == "always" else ParkDecision.KEEP
    return ParkDecision.PARK if free_bytes < pending_bytes + margin_bytes else ParkDecision.KEEP


def module_bytes(module: torch.nn.Module) -> int:
    """The bytes of `module`'s parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def bytes_not_on(modules: list[torch.nn.Module], device: torch.device) -> int:
    """The bytes of `modules`' tensors that are not on `device` (what still has to move there)."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors if not _same_device(t.device, device))


def device_free_bytes(device: torch.device) -> int:
    """Free memory for torch on a CUDA device: the driver's free bytes plus what the caching
    allocator holds unused; 0 on other devices (the decision keeps the encoders there)."""
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    unused_cache = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + unused_cache)


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    """Whether `actual` is `wanted` ("cuda" and "cuda:0" count as the same device)."""
    if actual.type != wanted.type:
        return False
    return actual.index is None or wanted.index is None or actual.index == wanted.index


@dataclass(frozen=True)
class TextEncoderParking:
    """Parks one model's text encoders around its encodes, as the engine's policy says.

    `device_type` is the engine's device type (the decision's input; the model's device is where
    the encoders come back to); `parking` is where they wait (CPU RAM)."""

    device_type: str
    mode: str = "auto"
    mover: Mover = move_module
    probe: FreeMemoryProbe = device_free_bytes
    margin_bytes: int = DEFAULT_MARGIN_BYTES
    parking: torch.device = CPU

    def __post_init__(self) -> None:
        check_offload_mode(self.mode)

    def before_encode(self, model: LoadedModel) -> None:
        """Bring parked encoders back to the model's device (no-op when they are there, or when
        the --medvram/--lowvram swapper owns them)."""
        if model.offloaded:
            return
        device = model.device
        for encoder in encoders_of(model):
            if bytes_not_on([encoder], device):
                self.mover(encoder, device)

    def after_encode(self, model: LoadedModel) -> ParkDecision:
        """Decide, and park the encoders when the decision says so; returns the decision."""
        encoders = encoders_of(model)
        device = model.device
        working = [m for m in (model.unet, model.vae) if m is not None]
        decision = decide_parking(
            self.device_type,
            self.probe(device) if self.mode == "auto" else 0,
            sum(module_bytes(m) for m in encoders),
            bytes_not_on(working, device),
            self.margin_bytes,
            self.mode,
            offloaded_by_plan=model.offloaded,
        )
        if decision is ParkDecision.PARK:
            for encoder in encoders:
                self.mover(encoder, self.parking)
        return decision


def encoders_of(model: LoadedModel) -> list[torch.nn.Module]:
    """The model's text encoders that exist (LoadedModel's text_encoder, _2, _3)."""
    found = (model.text_encoder, model.text_encoder_2, model.text_encoder_3)
    return [m for m in found if m is not None]

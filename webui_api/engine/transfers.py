"""How weights move between CPU RAM and the device, and their memory format there.

Two CUDA-only speed-ups, decided once per engine by pure functions (so they are tested on a CPU):

- Pinned parking: a model parked in CPU RAM (the LRU of `sd_checkpoints_limit`, --medvram and
  --lowvram swap units) is copied into page-locked memory, and copies back to the GPU are
  issued with ``non_blocking=True``: from pinned memory the driver DMAs directly, about twice
  as fast as from pageable memory, and the host thread does not wait for each tensor. PyTorch's
  pinned-memory allocator keeps a pinned block alive until the copies that read it are done.
  Copies to the CPU are waited for once per parked module, before anyone may read them.
- channels_last (--channels-last auto|on|off): the UNet's and VAE's 4-D weights in NHWC layout,
  which cuDNN's half-precision convolution kernels (tensor cores) prefer. "auto" turns it on for
  CUDA with half-precision weights; it is always off on the CPU, where it does not pay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)
CHANNELS_LAST_MODES = ("auto", "on", "off")
HALF_DTYPES = (torch.float16, torch.bfloat16)
HostAllocator = Callable[[torch.Tensor], torch.Tensor]  # an empty CPU tensor shaped like its argument


def pinned_like(tensor: torch.Tensor) -> torch.Tensor:
    """An empty page-locked CPU tensor with `tensor`'s shape, dtype and strides."""
    return torch.empty_like(tensor, device="cpu", pin_memory=True)


@dataclass(frozen=True)
class TransferPlan:
    """Pinned parking, non-blocking uploads and channels_last: what the engine's device allows."""

    pin_memory: bool = False
    non_blocking: bool = False
    channels_last: bool = False

    @classmethod
    def for_device(cls, device_type: str, weights: torch.dtype, channels_last: str = "auto") -> TransferPlan:
        """The plan for a device type ("cuda", "cpu", "mps", ...) and weights dtype."""
        if channels_last not in CHANNELS_LAST_MODES:
            raise ValueError(f"--channels-last must be one of {', '.join(CHANNELS_LAST_MODES)}, got {channels_last!r}")
        cuda = device_type == "cuda"
        nhwc = cuda and (channels_last == "on" or (channels_last == "auto" and weights in HALF_DTYPES))
        return cls(pin_memory=cuda, non_blocking=cuda, channels_last=nhwc)

    def move(self, module: torch.nn.Module, device: torch.device) -> None:
        """Move `module` to `device` the way this plan says (offload.Mover signature)."""
        target = torch.device(device)
        if target.type == "cpu" and self.pin_memory:
            park_pinned(module)
        else:
            module.to(target, non_blocking=self.non_blocking)

    def format(self, module: torch.nn.Module | None) -> None:
        """Lay `module`'s 4-D weights out as channels_last when the plan says so."""
        if self.channels_last and module is not None:
            module.to(memory_format=torch.channels_last)

    def describe(self) -> str:
        """One log line naming the decisions."""
        parking = "pinned, non-blocking" if self.pin_memory else "pageable"
        return f"parking {parking}; channels_last {'on' if self.channels_last else 'off'}"


def park_pinned(module: torch.nn.Module, allocate: HostAllocator = pinned_like) -> None:
    """Copy every parameter and buffer of `module` not yet in pinned memory into a CPU tensor
    from `allocate`, without blocking per tensor, then wait once for the device's copies."""
    sources: set[torch.device] = set()
    for owner in module.modules():
        for param in owner.parameters(recurse=False):
            if not param.data.is_pinned():
                sources.add(param.device)
                param.data = _host_copy(param.data, allocate)
        for name, buffer in owner.named_buffers(recurse=False):
            if buffer is not None and not buffer.is_pinned():
                sources.add(buffer.device)
                owner._buffers[name] = _host_copy(buffer, allocate)
    for device in sources:
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()


def _host_copy(tensor: torch.Tensor, allocate: HostAllocator) -> torch.Tensor:
    """`tensor` copied into `allocate`'s CPU memory; pageable memory when no pinned block can be
    had (page-locked memory is limited by the OS; parking must not fail for want of it)."""
    try:
        copy = allocate(tensor)
    except RuntimeError as err:  # cudaHostAlloc failure: torch raises RuntimeError / OutOfMemoryError
        log.warning("pinned memory unavailable (%s); parking in pageable memory", err)
        return tensor.to("cpu")
    copy.copy_(tensor, non_blocking=True)
    return copy

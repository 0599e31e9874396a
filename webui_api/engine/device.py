"""Device and precision policy: which torch device and dtypes the engine runs with, and the
memory facts /sdapi/v1/memory reports.

Both the engine and the postprocess models (upscalers, face restorers) resolve their device
strings here, so neither imports the other for it.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch

from webui_api.engine.precision import PrecisionPolicy
from webui_api.engine.transfers import TransferPlan

DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
CPU = torch.device("cpu")


def resolve_device(device: str) -> torch.device:
    """"auto" means CUDA when available, else CPU; anything else must be a torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" means fp16 on CUDA (A1111's default half precision) and fp32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class DevicePolicy:
    """Where models run and in which precision; fixed for the life of an engine."""

    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype  # fp32 with A1111's --no-half-vae, else `dtype`
    precision: PrecisionPolicy | None = None  # how the dtypes were decided (None: built by hand, no autocast)
    transfers: TransferPlan = TransferPlan()  # pinned parking, non-blocking copies, channels_last (engine.transfers)

    @classmethod
    def resolve(
        cls, device: str = "auto", dtype: str = "auto", no_half_vae: bool = False, *,
        precision: str = "autocast", upcast_sampling: bool = False, channels_last: str = "auto",
    ) -> DevicePolicy:
        """The policy for the server's --device/--dtype strings, A1111's precision flags
        (--no-half-vae, --precision, --upcast-sampling; see engine/precision.py) and
        --channels-last (engine/transfers.py)."""
        target = resolve_device(device)
        decided = PrecisionPolicy.resolve(
            target.type, dtype, no_half_vae=no_half_vae, precision=precision, upcast_sampling=upcast_sampling
        )
        transfers = TransferPlan.for_device(target.type, decided.weights, channels_last)
        return cls(target, decided.weights, decided.vae, decided, transfers)

    @property
    def autocast(self) -> bool:
        """Whether UNet calls run under torch.autocast (the default "autocast" with half weights)."""
        return self.precision is not None and self.precision.autocast

    @property
    def parks_in_ram(self) -> bool:
        """Whether models not in use move to CPU RAM (pointless when the device is the CPU)."""
        return self.device.type != "cpu"

    def free_memory(self) -> None:
        """Collect garbage and return cached device memory to the driver."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory(self) -> dict[str, Any]:
        """The body of /sdapi/v1/memory: {ram: {...}, cuda: {...}}."""
        return {"ram": ram_usage(), "cuda": cuda_usage(self.device)}


def ram_usage() -> dict[str, Any]:
    """A1111's `ram` block: this process's resident memory against the machine's total.

    Read from /proc (psutil is not a dependency); elsewhere the block is {"error": ...}.
    """
    try:
        total = _proc_kib("/proc/meminfo", "MemTotal:") * 1024
        used = _proc_kib("/proc/self/status", "VmRSS:") * 1024
    except (OSError, ValueError) as err:
        return {"error": f"{err}"}
    return {"free": total - used, "used": used, "total": total}


def _proc_kib(path: str, key: str) -> int:
    """One "<key> <n> kB" line of a /proc file, as an int number of KiB."""
    with open(path, encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key):
                return int(line.split()[1])
    raise ValueError(f"{key!r} not found in {path}")


def cuda_usage(device: torch.device) -> dict[str, Any]:
    """A1111's `cuda` block from torch's allocator statistics, or {"error": "unavailable"}
    when the machine has no CUDA (reported whatever device the engine itself uses, like A1111)."""
    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    target = device if device.type == "cuda" else torch.device("cuda")
    try:
        free, total = torch.cuda.mem_get_info(target)
        stats = torch.cuda.memory_stats(target)
    except RuntimeError as err:
        return {"error": f"{err}"}

    def pair(name: str) -> dict[str, int]:
        return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }

"""The engine object the server holds: device choice, the checkpoint list, the loaded model.

One `Engine` per device, used from one worker thread, so it needs no locks. Model state is
held here, never in module globals.
"""

from __future__ import annotations

import gc
from typing import Any

import torch

from webui_api.engine.models import CheckpointInfo, LoadedModel, build_embedded_model, embedded_checkpoint_info
from webui_api.engine.pipeline import run_txt2img
from webui_api.errors import UnknownCheckpoint
from webui_api.jobs import GenerationJob, JobResult
from webui_api.progress import CancelToken, RunObserver

DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


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


class Engine:
    """Owns the device and the loaded model; used from ONE worker thread."""

    def __init__(self, device: str = "auto", dtype: str = "auto") -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._embedded = embedded_checkpoint_info()
        self._current = self._embedded
        self._loaded: LoadedModel | None = None

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint the server can load (for now only the embedded tiny model)."""
        return [self._embedded]

    @property
    def current(self) -> CheckpointInfo:
        """The selected checkpoint (loaded or about to be)."""
        return self._current

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def find_checkpoint(self, name: str) -> CheckpointInfo:
        """A checkpoint by any of its aliases (title, name, hash, sha256, ...)."""
        for info in self.checkpoints():
            if name in info.aliases():
                return info
        raise UnknownCheckpoint(name)

    def load(self, title: str | None = None) -> LoadedModel:
        """Load `title` (or the current checkpoint); a no-op when it is already loaded."""
        info = self._current if title is None else self.find_checkpoint(title)
        if self._loaded is not None and self._loaded.info == info:
            return self._loaded
        self.unload()
        self._loaded = self._build(info)
        self._current = info
        return self._loaded

    def _build(self, info: CheckpointInfo) -> LoadedModel:
        if info != self._embedded:
            raise UnknownCheckpoint(info.title)
        return build_embedded_model(self.device, self.dtype)

    def unload(self) -> None:
        """Drop the loaded model and give its memory back (the CUDA cache too)."""
        if self._loaded is None:
            return
        self._loaded = None
        self.free_memory()

    def free_memory(self) -> None:
        """Collect garbage and return cached device memory; the scheduler calls this after a
        failed work item so the next job starts with the memory the failed one held."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def txt2img(self, job: GenerationJob, observer: RunObserver, cancel: CancelToken) -> JobResult:
        """Run a txt2img job on the job's checkpoint (or the current one)."""
        model = self.load(job.model_title)
        return run_txt2img(model, job, observer, cancel)

    def memory(self) -> dict[str, Any]:
        """The body of /sdapi/v1/memory: {ram: {...}, cuda: {...}}."""
        return {"ram": ram_usage(), "cuda": cuda_usage(self.device)}

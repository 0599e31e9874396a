"""Opt-in torch.compile of the UNet (--compile), warmed up when a model is loaded.

The UNet is compiled in place (`nn.Module.compile`), so everything that reaches into it (LoRA
weight patches, offload hooks, `unet.config`) keeps working: parameters are graph inputs, so
patching their values in place needs no recompile. The first call per input shape compiles;
`warm_up` makes that call for the family's default image size (512² SD1/SD2, 1024² SDXL, batch
1 with its negative prompt: two UNet rows) at load time, so the first client does not pay it.
"--compile-mode reduce-overhead" adds CUDA graphs (static shapes only, hence the warm-up).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_SIZE = {"sdxl": 1024, "sdxl-refiner": 1024}  # other families: 512


@dataclass(frozen=True)
class CompilePolicy:
    """Whether and how the UNet is compiled; `backend` is torch.compile's (tests use "eager")."""

    enabled: bool = False
    mode: str = "default"
    backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.mode not in COMPILE_MODES:
            raise ValueError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {self.mode!r}")

    def apply(self, model: Any) -> bool:
        """Compile `model.unet` in place once and warm it up; True when this call compiled it."""
        if not self.enabled or is_compiled(model.unet):
            return False
        mode = None if self.mode == "default" else self.mode
        model.unet.compile(backend=self.backend, mode=mode, dynamic=False)
        started = time.perf_counter()
        warm_up(model)
        log.info("Compiled the UNet of %s (%s, %s) in %.1f s", model.info.title, self.backend, self.mode,
                 time.perf_counter() - started)
        return True


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether `module.compile()` was called on it."""
    return getattr(module, "_compiled_call_impl", None) is not None


def warm_up(model: Any, size: int | None = None) -> torch.Tensor:
    """One UNet call at the family's default size with two rows (prompt + negative)."""
    config = model.unet.config
    side = (size or DEFAULT_SIZE.get(model.family, 512)) // 8
    dtype, device = model.dtype, model.device
    x = torch.zeros(2, config.in_channels, side, side, dtype=dtype, device=device)
    context = torch.zeros(2, 77, config.cross_attention_dim, dtype=dtype, device=device)
    extra: dict[str, Any] = {}
    if config.addition_embed_type == "text_time":
        times = 6
        pooled = config.projection_class_embeddings_input_dim - times * config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(2, pooled, dtype=dtype, device=device),
            "time_ids": torch.ones(2, times, device=device),
        }
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=bool(model.autocast)):
        out = model.unet(x, torch.tensor([999.0, 999.0], device=device), encoder_hidden_states=context,
                         return_dict=False, **extra)[0]
    return out

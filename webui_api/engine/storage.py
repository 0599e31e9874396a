"""Weight storage in float8 with per-layer upcast (Forge's `forge_unet_storage_dtype`).

The large matrices of a diffusion transformer are kept as float8 (half of bf16's memory);
each Linear casts its weight to the activation dtype at call time, so the arithmetic runs in
the model's dtype on any device (CPU has no float8 matmul). Only `nn.Linear` weights are
stored in float8: norms, embeddings and biases keep their dtype.
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F

# Forge's option values -> storage dtype; "Automatic" (and the bnb / LoRA variants we do not
# build) keep the model's dtype
FLOAT8_STORAGE = {
    "float8-e4m3fn": torch.float8_e4m3fn,
    "float8-e4m3fn (fp16 LoRA)": torch.float8_e4m3fn,
    "float8-e5m2": torch.float8_e5m2,
    "float8-e5m2 (fp16 LoRA)": torch.float8_e5m2,
}
FLOAT8_DTYPES = frozenset(FLOAT8_STORAGE.values())


def storage_dtype(option: object) -> torch.dtype | None:
    """The float8 dtype an option value asks for; None: keep the model's dtype."""
    return FLOAT8_STORAGE.get(str(option or "Automatic"))


def _upcast_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, self.weight.to(x.dtype), bias)


def store_linears_in(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Convert every Linear weight of `module` to `dtype` and make it upcast per call;
    returns how many layers were converted."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.weight.data = layer.weight.data.to(dtype)
            layer.forward = MethodType(_upcast_linear, layer)  # type: ignore[method-assign]  # this layer only
            count += 1
    return count

"""Linear layers whose weight stays GGUF-quantized in memory and is dequantized at each call.

A GGUF transformer keeps its matrices as the file's packed blocks (a uint8 buffer per layer, about
the file's size in memory instead of 2-4 bytes per weight); `forward` decodes the layer's weight on
its device (ggml_dequant), casts it to the activation dtype and runs the matmul, as Forge and
ComfyUI-GGUF do. A LoRA is not merged into the packed bytes (that would mean requantizing): it is
held as a separate delta added to the decoded weight at call time, the way Forge patches GGUF
layers, and dropped again after the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from webui_api.engine.ggml_dequant import BLOCK_SIZES, dequantize


@dataclass(frozen=True)
class PackedWeight:
    """One quantized matrix: its rows' packed bytes (uint8, (rows, bytes per row)) and type."""

    data: torch.Tensor
    quant_type: int


class QuantizedLinear(torch.nn.Module):
    """A Linear whose weight is decoded from packed GGML blocks at every call."""

    def __init__(self, packed: PackedWeight, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.quant_type = packed.quant_type
        self.register_buffer("packed_weight", packed.data)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.weight_delta: torch.Tensor | None = None  # a job's LoRA, (out, in), added after decoding

    def packed(self) -> torch.Tensor:
        """The packed rows (typed: nn.Module attributes are not)."""
        packed = self.packed_weight
        if not isinstance(packed, torch.Tensor):
            raise TypeError("packed_weight is not a tensor")
        return packed

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The decoded matrix (without any LoRA delta)."""
        return dequantize(self.packed(), self.quant_type, (self.out_features, self.in_features), dtype)

    def add_weight_delta(self, delta: torch.Tensor) -> None:
        """Add `delta` (shaped like the weight) to what every later call decodes."""
        delta = delta.to(self.packed().device, torch.float32).reshape(self.out_features, self.in_features)
        self.weight_delta = delta if self.weight_delta is None else self.weight_delta + delta

    def clear_weight_delta(self) -> None:
        self.weight_delta = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype)
        if self.weight_delta is not None:
            weight = weight + self.weight_delta.to(weight.device, x.dtype)  # the layer may have been offloaded
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, quant_type={self.quant_type}"


def keep_quantized(module: torch.nn.Module, packed: Mapping[str, PackedWeight]) -> set[str]:
    """Replace every Linear of `module` named in `packed` ("<module path>.weight") by a
    QuantizedLinear holding those bytes (moved to the layer's device); its float weight is
    dropped. Layers whose shape does not match are left as they are. Returns the keys used."""
    used: set[str] = set()
    for name, layer in list(module.named_modules()):
        entry = packed.get(name + ".weight")
        if entry is None or not isinstance(layer, torch.nn.Linear):
            continue
        block_size, type_size = BLOCK_SIZES[entry.quant_type]
        if tuple(entry.data.shape) != (layer.out_features, layer.in_features // block_size * type_size):
            continue
        device = layer.weight.device
        bias = None if layer.bias is None else layer.bias.detach()
        quantized = QuantizedLinear(PackedWeight(entry.data.to(device), entry.quant_type), layer.in_features,
                                    layer.out_features, bias)
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, quantized)
        used.add(name + ".weight")
    return used

"""GGUF weight files (llama.cpp's container, used for quantized Flux transformers).

To build the model, every tensor is dequantized with the `gguf` package's reference kernels
(numpy) into float32 and cast like any checkpoint. The transformer's quantized matrices are then
read again as packed rows (`read_gguf_packed`) and replace the float weights of their Linear
layers, which decode them at call time (quantized_linear): resident memory stays near the file's
size. Quantizations without a torch kernel (ggml_dequant) stay dequantized. GGML stores
dimensions fastest first, so shapes are reversed into torch order.
"""

from __future__ import annotations

from pathlib import Path

import torch

from webui_api.engine.ggml_dequant import has_kernel
from webui_api.engine.loading.files import UnusableModelFile
from webui_api.engine.quantized_linear import PackedWeight


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise UnusableModelFile(path, "GGUF files need the optional `gguf` package (pip install gguf)") from err
    try:
        return GGUFReader(str(path))
    except (OSError, ValueError) as err:
        raise UnusableModelFile(path, f"not a readable GGUF file ({err})") from err


def gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and torch-order shapes from the file's index (no tensor is dequantized)."""
    return {tensor.name: tuple(int(d) for d in reversed(tensor.shape)) for tensor in _reader(path).tensors}


def read_gguf_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file, dequantized to float32 (F16/BF16/F32 tensors keep their values)."""
    from gguf import quants

    state: dict[str, torch.Tensor] = {}
    for tensor in _reader(path).tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape))
        try:
            values = quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as err:
            raise UnusableModelFile(path, f"tensor {tensor.name!r} uses an unsupported quantization ({err})") from err
        state[tensor.name] = torch.from_numpy(values.reshape(shape).astype("float32", copy=True))  # own memory
    return state


def read_gguf_packed(path: Path) -> dict[str, PackedWeight]:
    """The file's quantized matrices that have a torch kernel, as packed rows (uint8, one row of
    blocks per output feature, copied out of the memory map)."""
    import numpy as np

    packed: dict[str, PackedWeight] = {}
    for tensor in _reader(path).tensors:
        quant_type = int(tensor.tensor_type)
        if len(tensor.shape) != 2 or not has_kernel(quant_type):
            continue
        rows = np.array(tensor.data, dtype=np.uint8, copy=True).reshape(int(tensor.shape[1]), -1)
        packed[tensor.name] = PackedWeight(torch.from_numpy(rows), quant_type)
    return packed

"""GGUF weight files (llama.cpp's container, used for quantized Flux transformers).

A checkpoint's transformer matrices whose quantization has a torch kernel (ggml_dequant) are
read as packed rows and end up in Linear layers that decode them at call time (quantized_linear),
so memory stays near the file's size, at load too; every other tensor (module files, 1-D tensors,
quantizations without a kernel) is dequantized with the `gguf` package's reference kernels (numpy)
into float32 and cast like any checkpoint. GGML stores
dimensions fastest first, so shapes are reversed into torch order.
"""

from __future__ import annotations

from collections.abc import Callable
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
    return read_gguf_split(path, lambda name: False)[0]


def read_gguf_split(
    path: Path, keep_packed: Callable[[str], bool]
) -> tuple[dict[str, torch.Tensor], dict[str, PackedWeight]]:
    """The file's tensors for building a model, and the matrices to keep packed.

    Tensors named by `keep_packed` that are 2-D and of a type with a torch kernel come back as
    packed rows (uint8, one row of blocks per output feature) and, in the state, as an
    uninitialised float32 placeholder of the right shape: building the model only checks shapes,
    and the caller must replace every such weight by its packed layer before the model is used
    (so the untouched placeholder memory is never paged in). Every other tensor is dequantized."""
    import numpy as np
    from gguf import quants

    state: dict[str, torch.Tensor] = {}
    packed: dict[str, PackedWeight] = {}
    for tensor in _reader(path).tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape))
        quant_type = int(tensor.tensor_type)
        if len(shape) == 2 and has_kernel(quant_type) and keep_packed(tensor.name):
            rows = np.array(tensor.data, dtype=np.uint8, copy=True).reshape(shape[0], -1)
            packed[tensor.name] = PackedWeight(torch.from_numpy(rows), quant_type)
            state[tensor.name] = torch.empty(shape, dtype=torch.float32)
            continue
        try:
            values = quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as err:
            raise UnusableModelFile(path, f"tensor {tensor.name!r} uses an unsupported quantization ({err})") from err
        state[tensor.name] = torch.from_numpy(values.reshape(shape).astype("float32", copy=True))  # own memory
    return state, packed

"""GGUF weight files (llama.cpp's container, used for quantized Flux transformers).

Tensors are dequantized with the `gguf` package's reference kernels (numpy) into float32 and
then cast like any checkpoint: the model runs at the server's dtype, not at the file's
quantization (the file only saves disk and download). Per-layer dequantization at run time
(keeping the quantized blocks in memory) is not built yet. GGML stores dimensions fastest
first, so shapes are reversed into torch order.
"""

from __future__ import annotations

from pathlib import Path

import torch

from webui_api.engine.loading.files import UnusableModelFile


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

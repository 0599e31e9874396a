"""GGML block formats decoded in torch, on the weights' own device (GGUF files' quantized tensors).

A quantized row of `n` values is n / block_size blocks of `type_size` bytes; a block holds fp16
scales (and minimums) and packed 4/5/6/8-bit integers. The layouts are llama.cpp's (ggml-quants),
the same the `gguf` package decodes in numpy; decoding here runs wherever the packed bytes live,
so a CUDA model dequantizes each layer on the GPU at call time. Formats without a kernel here are
dequantized at load by the caller instead (still correct, just not kept packed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

QK_K = 256  # values per K-quant super-block
# GGMLQuantizationType values (fixed by the file format)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K = 12, 13, 14
BLOCK_SIZES = {  # type -> (values per block, bytes per block)
    Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34),
    Q4_K: (QK_K, 144), Q5_K: (QK_K, 176), Q6_K: (QK_K, 210),
}


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """(n, 2) little-endian fp16 bytes -> (n, 1) float32."""
    return raw.contiguous().view(torch.float16).float()


def _shifts(values: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def _nibbles(qs: torch.Tensor, groups: int) -> torch.Tensor:
    """(n, groups * 16k) bytes -> low nibbles then high nibbles per group: (n, groups * 2, 16k)."""
    n = qs.shape[0]
    packed = qs.reshape(n, groups, 1, -1) >> _shifts((0, 4), qs.device).view(1, 1, 2, 1)
    return (packed & 0x0F).reshape(n, groups * 2, -1)


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes read as a little-endian uint32 -> its 32 bits, lowest first: (n, 32) uint8."""
    word = qh.contiguous().view(torch.int32)
    bits = (word >> torch.arange(32, dtype=torch.int32, device=qh.device).view(1, 32)) & 1
    return bits.to(torch.uint8)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * b[:, 2:].contiguous().view(torch.int8).float()


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 2:], 1).reshape(b.shape[0], -1).to(torch.int8) - 8
    return _f16(b[:, :2]) * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 4:], 1).reshape(b.shape[0], -1).float()
    return _f16(b[:, :2]) * q + _f16(b[:, 2:4])


def _q5(b: torch.Tensor, offset: int) -> torch.Tensor:
    """Q5_0 / Q5_1 integers: 4 low bits from nibbles, the fifth from the 32-bit mask."""
    low = _nibbles(b[:, offset + 4 :], 1).reshape(b.shape[0], -1)
    return low | (_high_bits(b[:, offset : offset + 4]) << 4)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * (_q5(b, 2).to(torch.int8) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * _q5(b, 4).float() + _f16(b[:, 2:4])


def _k_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K: eight 6-bit scales and eight 6-bit minimums packed in 12 bytes."""
    n = scales.shape[0]
    grid = scales.reshape(n, 3, 4)
    d, m, md = grid[:, 0], grid[:, 1], grid[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc.float(), mins.float()


def _k_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """d * sc * q - dmin * m over the eight 32-value sub-blocks."""
    n = b.shape[0]
    sc, mins = _k_scales(b[:, 4:16])
    scale = (_f16(b[:, :2]) * sc).reshape(n, 8, 1)
    offset = (_f16(b[:, 2:4]) * mins).reshape(n, 8, 1)
    return (scale * q.float() - offset).reshape(n, QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    return _k_affine(b, _nibbles(b[:, 16:], 4))


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    low = _nibbles(b[:, 48:], 4)
    high = (b[:, 16:48].reshape(n, 1, 1, 32) >> _shifts(tuple(range(8)), b.device).view(1, 1, 8, 1)) & 1
    return _k_affine(b, low | (high.reshape(n, 8, 32) << 4))


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    low = (b[:, :128].reshape(n, 2, 1, 64) >> _shifts((0, 4), b.device).view(1, 1, 2, 1)) & 0x0F
    high = (b[:, 128:192].reshape(n, 2, 1, 32) >> _shifts((0, 2, 4, 6), b.device).view(1, 1, 4, 1)) & 0x03
    q = (low.reshape(n, 8, 32) | (high.reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(b[:, 208:210]) * scales).reshape(n, 16, 1)
    return (d * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


_KERNELS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    Q4_0: _q4_0, Q4_1: _q4_1, Q5_0: _q5_0, Q5_1: _q5_1, Q8_0: _q8_0, Q4_K: _q4_k, Q5_K: _q5_k, Q6_K: _q6_k,
}


def has_kernel(quant_type: int) -> bool:
    return quant_type in _KERNELS


def dequantize(packed: torch.Tensor, quant_type: int, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Packed rows (uint8, (rows, bytes per row)) -> a (rows, columns) matrix in `dtype`."""
    _, type_size = BLOCK_SIZES[quant_type]
    blocks = packed.reshape(-1, type_size)
    return _KERNELS[quant_type](blocks).reshape(shape).to(dtype)

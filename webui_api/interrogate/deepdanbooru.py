"""The DeepDanbooru tagger network in A1111's torch layout (`models/torch_deepdanbooru/*.pt`).

A1111's `deepbooru_model.DeepDanbooruModel` is a converted ResNet: 179 convolutions named
`n_Conv_0` … `n_Conv_178` (plus `n_MaxPool_0`), explicit asymmetric zero padding before every
3x3 / 7x7 convolution (TensorFlow's "same"), bottleneck blocks, global average pooling and a
sigmoid per tag. The `.pt` file is a plain state dict with those keys and a `tags` list.

We build the same network from a table of blocks instead of 800 generated lines, and take the
channel counts from the file's tensor shapes, so a small file with A1111's key names (the
tests') and the real 9176-tag file load through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.loading.files import UnusableModelFile
from .weights import read_torch_pickle

STEM_CONV = 0
HEAD_CONV = 178
CONV_COUNT = 179


@dataclass(frozen=True)
class Bottleneck:
    """One residual block: 1x1 reduce, 3x3, 1x1 expand; `shortcut` is a 1x1 projection conv
    (None: identity). `stride` 2 halves the size in the 3x3 conv and the projection."""

    reduce: int
    middle: int
    expand: int
    shortcut: int | None
    stride: int


def _identity_blocks(first: int, count: int) -> list[Bottleneck]:
    return [Bottleneck(first + 3 * i, first + 3 * i + 1, first + 3 * i + 2, None, 1) for i in range(count)]


def _block_table() -> tuple[Bottleneck, ...]:
    """The block order of A1111's forward(): where each block's convs and projection sit.

    Stages start with a projection block (projection conv numbered first); the one mid-stage
    downsampling block of stage 3 numbers its projection after its three convs.
    """
    blocks: list[Bottleneck] = [Bottleneck(2, 3, 4, 1, 1), *_identity_blocks(5, 2)]
    blocks += [Bottleneck(12, 13, 14, 11, 2), *_identity_blocks(15, 7)]
    blocks += [Bottleneck(37, 38, 39, 36, 2), *_identity_blocks(40, 19)]
    blocks += [Bottleneck(97, 98, 99, 100, 2), *_identity_blocks(101, 19)]
    blocks += [Bottleneck(159, 160, 161, 158, 2), *_identity_blocks(162, 2)]
    blocks += [Bottleneck(169, 170, 171, 168, 2), *_identity_blocks(172, 2)]
    return tuple(blocks)


BLOCKS = _block_table()


def _conv_strides() -> dict[int, int]:
    strides = {STEM_CONV: 2}
    for block in BLOCKS:
        strides[block.middle] = block.stride
        if block.shortcut is not None:
            strides[block.shortcut] = block.stride
    return strides


class DeepDanbooruModel(nn.Module):
    """A1111's DeepDanbooru network; input NHWC floats in [0, 1], output per-tag probabilities."""

    def __init__(self, conv_shapes: dict[int, torch.Size], head_bias: bool = False) -> None:
        super().__init__()
        strides = _conv_strides()
        for index in range(CONV_COUNT):
            out_ch, in_ch, kh, kw = conv_shapes[index]
            bias = head_bias if index == HEAD_CONV else True
            conv = nn.Conv2d(in_ch, out_ch, kernel_size=(kh, kw), stride=strides.get(index, 1), bias=bias)
            self.add_module(f"n_Conv_{index}", conv)
        self.n_MaxPool_0 = nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2))
        self.tags: list[str] = []

    def conv(self, index: int) -> nn.Conv2d:
        return getattr(self, f"n_Conv_{index}")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2)
        x = F.relu(self.conv(STEM_CONV)(F.pad(x, [2, 3, 2, 3], value=0)))
        x = self.n_MaxPool_0(F.pad(x, [0, 1, 0, 1], value=float("-inf")))
        for block in BLOCKS:
            x = self._block(block, x)
        x = self.conv(HEAD_CONV)(x)
        x = F.avg_pool2d(x, kernel_size=x.shape[-2:]).squeeze(3).squeeze(2)
        return torch.sigmoid(x)

    def _block(self, block: Bottleneck, x: torch.Tensor) -> torch.Tensor:
        residual = x if block.shortcut is None else self.conv(block.shortcut)(x)
        h = F.relu(self.conv(block.reduce)(x))
        padding = [0, 1, 0, 1] if block.stride == 2 else [1, 1, 1, 1]
        h = F.relu(self.conv(block.middle)(F.pad(h, padding, value=0)))
        h = self.conv(block.expand)(h)
        return F.relu(h + residual)


def load_deepdanbooru(path: Path) -> DeepDanbooruModel:
    """The model of one A1111 `.pt` file (plain tensors and the `tags` list; no code is unpickled)."""
    raw = read_torch_pickle(path)
    tags = raw.get("tags")
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise UnusableModelFile(path, "no 'tags' list of strings: not an A1111 torch_deepdanbooru model")
    weights = {key: value for key, value in raw.items() if key != "tags"}
    shapes = _conv_shapes(path, weights)
    model = DeepDanbooruModel(shapes, head_bias=f"n_Conv_{HEAD_CONV}.bias" in weights)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise UnusableModelFile(path, f"weights do not fit A1111's DeepDanbooru layout ({err})") from err
    if len(tags) != shapes[HEAD_CONV][0]:
        raise UnusableModelFile(path, f"{len(tags)} tags for {shapes[HEAD_CONV][0]} outputs")
    model.tags = list(tags)
    return model.eval()


def _conv_shapes(path: Path, weights: dict[str, Any]) -> dict[int, torch.Size]:
    shapes = {}
    for index in range(CONV_COUNT):
        tensor = weights.get(f"n_Conv_{index}.weight")
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
            raise UnusableModelFile(path, f"missing n_Conv_{index}.weight: not an A1111 torch_deepdanbooru model")
        shapes[index] = tensor.shape
    return shapes

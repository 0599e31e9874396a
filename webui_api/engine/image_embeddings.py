"""Textual-inversion embeddings carried inside images, as A1111 writes them.

A1111 stores an embedding in an image in one of two ways, and reads both:

- A PNG text chunk `sd-ti-embedding` holding base64 of the embedding as JSON, where each
  tensor is written as `{"TORCHTENSOR": nested lists}`.
- In the pixels: the JSON, zlib-compressed, split into low and high nibbles. Each nibble
  block is laid out as (image height, columns, 3) RGB pixels whose low four bits carry the
  data XOR-ed with a fixed LCG stream (the high four bits only draw a pattern), placed left
  (low nibbles) and right (high nibbles) of the picture with one black column between. The
  reader crops the black border, finds those two all-zero columns and reverses the steps.

An image with neither form is a preview picture, not an embedding (`NotAnEmbedding`).
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

TEXT_CHUNK = "sd-ti-embedding"
TENSOR_KEY = "TORCHTENSOR"
IMAGE_EXTENSIONS = (".png", ".webp", ".jxl", ".avif")  # A1111 looks for embeddings in these
LCG_MODULUS, LCG_MULTIPLIER, LCG_INCREMENT = 2**32, 1664525, 1013904223
NIBBLE = 0x0F


class NotAnEmbedding(ValueError):
    """An image that carries no embedding (a preview picture); skipped without a warning."""


class BadImageEmbedding(ValueError):
    """An image whose embedding data cannot be decoded."""


def _tensors(node: dict[str, Any]) -> Any:
    """json object hook: `{"TORCHTENSOR": lists}` becomes a tensor."""
    if TENSOR_KEY in node:
        return torch.from_numpy(np.array(node[TENSOR_KEY]))
    return node


def decode_json(raw: bytes) -> Mapping[str, Any]:
    """The embedding mapping from its JSON text (tensors restored)."""
    try:
        data = json.loads(raw, object_hook=_tensors)
    except (UnicodeDecodeError, ValueError) as err:
        raise BadImageEmbedding(f"the embedded data is not JSON ({err})") from err
    if not isinstance(data, dict):
        raise BadImageEmbedding(f"the embedded JSON is a {type(data).__name__}, expected an object")
    return data


def from_text_chunk(text: str) -> Mapping[str, Any]:
    """The `sd-ti-embedding` chunk: base64 of the JSON."""
    try:
        raw = base64.b64decode(text)
    except (binascii.Error, ValueError) as err:
        raise BadImageEmbedding(f"the {TEXT_CHUNK} chunk is not base64 ({err})") from err
    return decode_json(raw)


def lcg_nibbles(count: int) -> np.ndarray:
    """The first `count` values of A1111's key stream (LCG from seed 0, each value mod 255),
    low four bits only: the mask XOR-ed over every data block."""
    out = np.empty(count, dtype=np.uint8)
    seed = 0
    for index in range(count):
        seed = (LCG_MULTIPLIER * seed + LCG_INCREMENT) % LCG_MODULUS
        out[index] = (seed % 255) & NIBBLE
    return out


def unmask(block: np.ndarray) -> np.ndarray:
    """A block's data nibbles: XOR with the key stream, laid out in the block's row-major order."""
    return block ^ lcg_nibbles(block.size).reshape(block.shape)


def crop_black(pixels: np.ndarray) -> np.ndarray:
    """The smallest window holding every pixel whose three channels are all non-zero."""
    lit = np.all(pixels > 0, axis=2)
    rows, cols = np.flatnonzero(np.any(lit, axis=1)), np.flatnonzero(np.any(lit, axis=0))
    if rows.size == 0:
        return pixels[:0, :0]
    return pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def from_pixels(pixels: np.ndarray) -> Mapping[str, Any]:
    """The pixel-encoded form: (H, W, 3) uint8 RGB in, the embedding mapping out."""
    low_bits = crop_black(pixels) & NIBBLE
    separators = np.flatnonzero(low_bits.sum(axis=(0, 2), dtype=np.int64) == 0)
    if separators.size < 2:
        raise NotAnEmbedding("no data columns beside the picture")
    low = unmask(low_bits[:, : separators.min()])
    high = unmask(low_bits[:, separators.max() + 1 :])
    if low.shape != high.shape:
        raise BadImageEmbedding(f"the two data blocks differ in size: {low.shape} and {high.shape}")
    try:
        raw = zlib.decompress(((high << 4) | low).tobytes())
    except zlib.error as err:
        raise BadImageEmbedding(f"the pixel data does not decompress ({err})") from err
    return decode_json(raw)


def read_image_embedding(path: Path) -> Mapping[str, Any]:
    """The embedding an image carries: the text chunk when present, else the pixels.

    Raises NotAnEmbedding for a plain picture (and for A1111's `*.preview.*` images, which it
    never reads as embeddings), BadImageEmbedding when the data is damaged.
    """
    from PIL import Image, UnidentifiedImageError

    if Path(path.stem).suffix.lower() == ".preview":
        raise NotAnEmbedding("a preview image")
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}) or {}
            if TEXT_CHUNK in text:
                return from_text_chunk(text[TEXT_CHUNK])
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise BadImageEmbedding(f"unreadable image ({err})") from err
    return from_pixels(pixels)

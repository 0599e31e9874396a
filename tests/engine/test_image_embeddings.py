"""Textual-inversion embeddings inside images: A1111's `sd-ti-embedding` PNG text chunk and
its pixel encoding. The images are built here the way A1111 lays them out."""

from __future__ import annotations

import base64
import json
import logging
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from webui_api.engine.embeddings import EmbeddingFormatError, EmbeddingLibrary, load_embedding
from webui_api.engine.image_embeddings import NotAnEmbedding, lcg_nibbles
from webui_api.engine.loading.discovery import ModelPaths

VECTORS = [[0.25, -0.5, 1.0, 2.0], [0.125, 0.75, -1.5, 3.0]]


def _payload(name: str) -> dict:
    return {"string_to_param": {"*": {"TORCHTENSOR": VECTORS}}, "name": name, "step": 420,
            "sd_checkpoint": "e1441589", "sd_checkpoint_name": "v1-5"}


def _picture(size=(24, 16)) -> Image.Image:
    pixels = np.random.default_rng(0).integers(16, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _text_chunk_png(path, payload: dict) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(payload).encode()).decode())
    _picture().save(path, pnginfo=info)


def _nibble_block(values: np.ndarray, height: int) -> np.ndarray:
    """Data nibbles as (height, columns, 3) pixels: cycled to fill whole columns, masked with
    the key stream, a non-zero pattern in the high bits (A1111 draws dots there)."""
    per_column = height * 3
    size = -(-values.size // per_column) * per_column
    block = np.resize(values, size).reshape(height, -1, 3).astype(np.uint8)
    masked = block ^ lcg_nibbles(block.size).reshape(block.shape)
    pattern = np.random.default_rng(1).integers(1, 16, block.shape, dtype=np.uint8) << 4
    return masked | pattern


def _pixel_png(path, payload: dict) -> None:
    data = np.frombuffer(zlib.compress(json.dumps(payload).encode(), 9), np.uint8)
    picture = _picture()
    height = picture.size[1]
    low, high = _nibble_block(data & 0x0F, height), _nibble_block(data >> 4, height)
    width = low.shape[1] + 1 + picture.size[0] + 1 + high.shape[1]
    canvas = np.zeros((height + 4, width + 6, 3), dtype=np.uint8)  # a black border to crop away
    canvas[2:-2, 3 : 3 + low.shape[1]] = low
    left = 3 + low.shape[1] + 1
    canvas[2:-2, left : left + picture.size[0]] = np.asarray(picture)
    canvas[2:-2, left + picture.size[0] + 1 : left + picture.size[0] + 1 + high.shape[1]] = high
    Image.fromarray(canvas, "RGB").save(path)


@pytest.mark.parametrize("writer", [_text_chunk_png, _pixel_png])
def test_an_embedding_in_an_image_loads_under_its_stored_name(tmp_path, writer):
    writer(tmp_path / "file-name.png", _payload("stored-name"))
    embedding = load_embedding(tmp_path / "file-name.png")
    assert embedding.name == "stored-name"
    assert torch.equal(embedding.vectors_for("text_encoder"), torch.tensor(VECTORS, dtype=torch.float32))
    assert embedding.api_item() == {
        "step": 420,
        "sd_checkpoint": "e1441589",
        "sd_checkpoint_name": "v1-5",
        "shape": 4,
        "vectors": 2,
    }


def test_the_key_stream_is_a1111s_lcg():
    seeds, seed = [], 0
    for _ in range(4):
        seed = (1664525 * seed + 1013904223) % 2**32
        seeds.append((seed % 255) & 0x0F)
    assert lcg_nibbles(4).tolist() == seeds == [0x0F & (1013904223 % 255), *seeds[1:]]


def test_plain_and_preview_pictures_are_not_embeddings(tmp_path, caplog):
    _picture().save(tmp_path / "plain.png")
    _text_chunk_png(tmp_path / "real.preview.png", _payload("preview"))
    with pytest.raises(NotAnEmbedding):
        load_embedding(tmp_path / "plain.png")
    with pytest.raises(NotAnEmbedding):
        load_embedding(tmp_path / "real.preview.png")
    _pixel_png(tmp_path / "pixels.png", _payload("from-pixels"))
    with caplog.at_level(logging.WARNING):
        library = EmbeddingLibrary(ModelPaths(data_dir=tmp_path, embeddings_dirs=(tmp_path,)))
    assert [e.name for e in library.embeddings()] == ["from-pixels"]
    assert not caplog.records


def test_damaged_image_data_is_a_format_error(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(b"not json").decode())
    _picture().save(tmp_path / "broken.png", pnginfo=info)
    with pytest.raises(EmbeddingFormatError, match="not JSON"):
        load_embedding(tmp_path / "broken.png")

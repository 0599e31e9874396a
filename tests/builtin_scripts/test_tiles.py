"""SD upscale's tiles: A1111's placement, and a blend that restores unchanged tiles exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui_api.builtin_scripts import tiles


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_origins_follow_a1111_split_grid():
    # 128 px, 64 px tiles, 8 px overlap: ceil(120 / 56) = 3 tiles, spread (128 - 64) / 2 = 32 apart
    assert tiles.origins(128, 64, 8) == [0, 32, 64]
    assert tiles.origins(64, 64, 8) == [0]
    assert tiles.origins(200, 64, 16) == [0, 45, 90, 136]


def test_split_then_combine_returns_the_image():
    image = noise_image(200, 136)
    grid = tiles.split(image, 64, 64, 16)
    assert all(tile.size == (64, 64) for tile in grid.tiles)
    assert np.array_equal(np.asarray(tiles.combine(grid)), np.asarray(image))


def test_overlap_is_feathered_between_different_tiles():
    grid = tiles.split(Image.new("RGB", (112, 64)), 64, 64, 16)
    assert [row.xs for row in grid.rows] == [[0, 48]]
    grid.replace_tiles([Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (255, 255, 255))])
    row = np.asarray(tiles.combine(grid))[10, :, 0]
    assert row[47] == 0 and row[64] == 255  # before the overlap and after it
    ramp = row[48:64]
    assert ramp[0] == 0 and np.all(np.diff(ramp.astype(int)) > 0)  # rises across the 16 px


def test_missing_tiles_become_black():
    grid = tiles.split(noise_image(128, 64), 64, 64, 8)
    grid.replace_tiles([])
    assert not np.asarray(tiles.combine(grid)).any()


def test_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(ValueError, match="overlap"):
        tiles.split(noise_image(128, 128), 64, 64, 64)

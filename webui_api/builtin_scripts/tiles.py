"""Overlapping tiles of an image and their feathered reassembly (A1111's split_grid / combine_grid).

Tiles have the job size; neighbours overlap by `overlap` px and are spread evenly, the last
one flush with the edge. Reassembly pastes each tile over its left neighbour with a linear
alpha ramp across the overlap (0 at the left edge of the overlap, rising towards 1), then the
rows over each other with the same ramp vertically, so seams fade instead of cutting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class TileRow:
    y: int
    height: int
    xs: list[int]
    tiles: list[Image.Image] = field(default_factory=list)


@dataclass
class TileGrid:
    rows: list[TileRow]
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int

    @property
    def tiles(self) -> list[Image.Image]:
        """Every tile, row by row (the order they are generated in)."""
        return [tile for row in self.rows for tile in row.tiles]

    def replace_tiles(self, images: list[Image.Image]) -> None:
        """Put generated tiles back in row order; missing ones (an interrupted run) are black."""
        index = 0
        for row in self.rows:
            for col in range(len(row.tiles)):
                row.tiles[col] = images[index] if index < len(images) else Image.new("RGB", (self.tile_w, self.tile_h))
                index += 1


def origins(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts; the count covers `length` with `tile - overlap` px of new image per tile."""
    count = max(1, math.ceil((length - overlap) / (tile - overlap)))
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [length - tile if int(i * step) + tile >= length else int(i * step) for i in range(count)]


def split(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> TileGrid:
    """Cut `image` into overlapping tiles of tile_w x tile_h (overlap < both sides)."""
    if not 0 <= overlap < min(tile_w, tile_h):
        raise ValueError(f"overlap must be at least 0 and smaller than the tile ({tile_w}x{tile_h}); got {overlap}")
    width, height = image.size
    grid = TileGrid([], tile_w, tile_h, width, height, overlap)
    xs = origins(width, tile_w, overlap)
    for y in origins(height, tile_h, overlap):
        tiles = [image.crop((x, y, x + tile_w, y + tile_h)) for x in xs]
        grid.rows.append(TileRow(y, tile_h, list(xs), tiles))
    return grid


def _ramp(length: int, across: int, horizontal: bool) -> Image.Image:
    """An "L" mask rising linearly over `length` px (A1111's values: i * 255 / overlap)."""
    values = (np.arange(length, dtype=np.float32) * 255 / length).astype(np.uint8)
    block = np.repeat(values[None, :], across, axis=0) if horizontal else np.repeat(values[:, None], across, axis=1)
    return Image.fromarray(block, "L")


def combine(grid: TileGrid) -> Image.Image:
    """The tiles blended back into one image of the original size."""
    result = Image.new("RGB", (grid.image_w, grid.image_h))
    for row in grid.rows:
        line = _combine_row(grid, row)
        if row.y == 0 or grid.overlap == 0:
            result.paste(line, (0, row.y))
            continue
        ramp = _ramp(grid.overlap, grid.image_w, horizontal=False)
        result.paste(line.crop((0, 0, line.width, grid.overlap)), (0, row.y), mask=ramp)
        result.paste(line.crop((0, grid.overlap, line.width, row.height)), (0, row.y + grid.overlap))
    return result


def _combine_row(grid: TileGrid, row: TileRow) -> Image.Image:
    line = Image.new("RGB", (grid.image_w, row.height))
    for x, tile in zip(row.xs, row.tiles, strict=True):
        if x == 0 or grid.overlap == 0:
            line.paste(tile, (x, 0))
            continue
        ramp = _ramp(grid.overlap, row.height, horizontal=True)
        line.paste(tile.crop((0, 0, grid.overlap, row.height)), (x, 0), mask=ramp)
        line.paste(tile.crop((grid.overlap, 0, tile.width, row.height)), (x + grid.overlap, 0))
    return line

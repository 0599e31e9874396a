"""A1111's image grid: the batch pasted into rows and columns, returned first and/or saved
when a request sets save_images (A1111's return_grid / grid_save options)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class GridShape:
    rows: int
    cols: int


def grid_shape(count: int, batch_size: int, options: Mapping[str, Any]) -> GridShape:
    """Rows from the n_rows option (>0 fixed, 0 = batch size, -1 = about square), never more
    rows than images; grid_prevent_empty_spots picks a row count that divides the image count."""
    if count < 1:
        raise ValueError(f"a grid needs at least one image, got {count}")
    n_rows = int(options.get("n_rows", -1))
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    elif options.get("grid_prevent_empty_spots", False):
        rows = _dividing_rows(count)
    else:
        rows = round(math.sqrt(count))
    rows = max(1, min(rows, count))
    return GridShape(rows, math.ceil(count / rows))


def _dividing_rows(count: int) -> int:
    rows = math.floor(math.sqrt(count))
    while count % rows != 0:
        rows -= 1
    return rows


def image_grid(images: Sequence[Image.Image], shape: GridShape) -> Image.Image:
    """Paste images row by row on a black RGB canvas sized by the first image."""
    width, height = images[0].size
    canvas = Image.new("RGB", (shape.cols * width, shape.rows * height), color="black")
    for index, image in enumerate(images):
        canvas.paste(image, box=(index % shape.cols * width, index // shape.cols * height))
    return canvas


def wants_grid(count: int, options: Mapping[str, Any]) -> bool:
    """A1111 makes a grid when it will return or save one, and (by default) only for 2+ images."""
    if count < 2 and options.get("grid_only_if_multiple", True):
        return False
    return count >= 1 and bool(options.get("return_grid", True) or options.get("grid_save", True))

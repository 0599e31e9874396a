"""Grids with legends for the X/Y/Z plot (A1111's image_grid + draw_grid_annotations).

Cells may differ in size (a Size axis): every cell gets the largest size and smaller images
are centred in it. The legend puts column labels above and row labels to the left, in a
font sized from the cell ((w + h) // 25 px, as A1111 sizes it), wrapped to the cell width;
a side whose labels are all empty gets no band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageColor, ImageDraw, ImageFont

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont  # load_default gives FreeType when it can

TEXT_COLOUR = (0, 0, 0)


@dataclass(frozen=True)
class Cell:
    width: int
    height: int


def cell_size(images: Sequence[Image.Image]) -> Cell:
    return Cell(max(image.width for image in images), max(image.height for image in images))


def paste_grid(images: Sequence[Image.Image], rows: int, background: str = "#ffffff") -> Image.Image:
    """Images row by row, `rows` rows, each in a cell of the largest size (centred)."""
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    cell = cell_size(images)
    grid = Image.new("RGB", (cols * cell.width, rows * cell.height), _colour(background))
    for index, image in enumerate(images):
        dx, dy = (cell.width - image.width) // 2, (cell.height - image.height) // 2
        grid.paste(image, (index % cols * cell.width + dx, index // cols * cell.height + dy))
    return grid


def _colour(value: str) -> tuple[int, int, int]:
    try:
        return ImageColor.getrgb(value)[:3]
    except ValueError:
        return (255, 255, 255)


def annotate(
    grid: Image.Image,
    cell: Cell,
    columns: Sequence[str],
    rows: Sequence[str],
    margin: int = 0,
    background: str = "#ffffff",
) -> Image.Image:
    """The grid with labels above its columns and left of its rows, `margin` px between cells."""
    font_size = max(8, (cell.width + cell.height) // 25)
    font = ImageFont.load_default(size=font_size)
    spacing = font_size // 2
    col_lines = [_wrap(text, font, cell.width) for text in columns]
    pad_left = cell.width * 3 // 4 if any(rows) else 0
    row_lines = [_wrap(text, font, max(pad_left, 1)) for text in rows]
    col_heights = [_block_height(lines, font, spacing) for lines in col_lines]
    pad_top = max(col_heights) + spacing * 2 if any(col_heights) else 0
    n_cols, n_rows = len(columns), len(rows)
    size = (grid.width + pad_left + margin * (n_cols - 1), grid.height + pad_top + margin * (n_rows - 1))
    result = Image.new("RGB", size, _colour(background))
    for row in range(n_rows):
        for col in range(n_cols):
            box = (cell.width * col, cell.height * row, cell.width * (col + 1), cell.height * (row + 1))
            result.paste(
                grid.crop(box), (pad_left + (cell.width + margin) * col, pad_top + (cell.height + margin) * row)
            )
    draw = ImageDraw.Draw(result)
    for col, lines in enumerate(col_lines):
        centre_x = pad_left + (cell.width + margin) * col + cell.width / 2
        _draw_block(draw, lines, font, spacing, centre_x, pad_top / 2 - col_heights[col] / 2)
    for row, lines in enumerate(row_lines):
        top = pad_top + (cell.height + margin) * row + cell.height / 2 - _block_height(lines, font, spacing) / 2
        _draw_block(draw, lines, font, spacing, pad_left / 2, top)
    return result


def _text_size(text: str, font: Font) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return int(right - left), int(bottom - top)  # Pillow types FreeType boxes as float; they are whole pixels


def _wrap(text: str, font: Font, width: int) -> list[str]:
    """Words greedily packed into lines no wider than `width` (a longer word stays whole)."""
    if not text:
        return []
    lines, current = [], ""
    for word in text.split(" "):
        candidate = f"{current} {word}".strip()
        if current and _text_size(candidate, font)[0] > width:
            lines.append(current)
            candidate = word
        current = candidate
    return lines + [current]


def _block_height(lines: list[str], font: Font, spacing: int) -> int:
    if not lines:
        return 0
    return sum(_text_size(line, font)[1] + spacing for line in lines) - spacing


def _draw_block(
    draw: ImageDraw.ImageDraw, lines: list[str], font: Font, spacing: int, centre_x: float, top: float
) -> None:
    for line in lines:
        draw.text((centre_x, top), line, font=font, fill=TEXT_COLOUR, anchor="ma")
        top += _text_size(line, font)[1] + spacing

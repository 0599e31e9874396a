"""X/Y/Z grids: cells of the largest size, legend bands only where there is text, margins."""

from __future__ import annotations

import numpy as np
from PIL import Image

from webui_api.builtin_scripts import grid_draw


def solid(size, colour):
    return Image.new("RGB", size, colour)


def test_paste_grid_centres_smaller_images_in_the_largest_cell():
    grid = grid_draw.paste_grid([solid((32, 32), "red"), solid((16, 32), "blue")], rows=1, background="#00ff00")
    assert grid.size == (64, 32)
    pixels = np.asarray(grid)
    # the second cell spans x 32..64: 8 px of background, 16 px of blue, 8 px of background
    assert [tuple(pixels[0, x]) for x in (34, 40, 55, 60)] == [(0, 255, 0), (0, 0, 255), (0, 0, 255), (0, 255, 0)]


def test_labels_add_bands_and_margins_space_the_cells():
    cells = [solid((40, 40), "black")] * 4
    grid = grid_draw.paste_grid(cells, rows=2)
    cell = grid_draw.cell_size(cells)
    plain = grid_draw.annotate(grid, cell, ["", ""], ["", ""])
    assert plain.size == grid.size
    labelled = grid_draw.annotate(grid, cell, ["Steps: 1", "Steps: 2"], ["Seed: 1", "Seed: 2"], margin=6)
    pad_left = 40 * 3 // 4
    assert labelled.width == 80 + pad_left + 6 and labelled.height > 80 + 6
    band = np.asarray(labelled)[: labelled.height - 86, pad_left:]
    assert (band < 128).any()  # some text was drawn above the columns

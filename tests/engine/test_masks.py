"""Inpainting masks on the pixel side: A1111's binary mask, blur, crop region, fill, overlay."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui_api.engine.image_prep import TargetSize
from webui_api.engine.masks import (
    CropBox,
    MaskSettings,
    binary_mask,
    blur_mask,
    crop_region,
    expand_to_ratio,
    fill_masked,
    gaussian_kernel,
    prepare_mask,
)
from webui_api.errors import BadRequest


def test_varying_alpha_is_the_mask_and_is_thresholded():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:, :2, 3] = 200
    rgba[:, 2:, 3] = 100
    mask = np.asarray(binary_mask(Image.fromarray(rgba, "RGBA"), round_alpha=True))
    assert mask[:, :2].min() == 255 and mask[:, 2:].max() == 0


def test_opaque_rgba_uses_the_grey_values():
    image = Image.new("RGBA", (4, 4), (128, 128, 128, 255))
    assert binary_mask(image, True).getpixel((0, 0)) == 128


def test_kernel_size_follows_opencv_rule():
    assert len(gaussian_kernel(4)) == 2 * int(2.5 * 4 + 0.5) + 1
    assert gaussian_kernel(4).sum() == pytest.approx(1.0)


def test_blur_is_separable_and_direction_specific():
    pixels = np.zeros((32, 32), np.uint8)
    pixels[16, 16] = 255
    only_x = np.asarray(blur_mask(Image.fromarray(pixels), 2, 0))
    assert only_x[16, 12:21].min() > 0 and only_x[14, 16] == 0
    assert np.array_equal(np.asarray(blur_mask(Image.fromarray(pixels), 0, 0)), pixels)


def test_crop_region_pads_and_expands_to_the_job_ratio():
    mask = np.zeros((100, 200), np.uint8)
    mask[40:50, 90:130] = 255
    box = crop_region(Image.fromarray(mask), 5, TargetSize(64, 64))
    assert (box.x1, box.x2) == (85, 135) and box.y2 - box.y1 == 50  # 50x20 grown to 50x50
    assert crop_region(Image.new("L", (8, 8)), 4, TargetSize(8, 8)) is None


def test_expanded_box_is_shifted_back_inside_the_image():
    box = expand_to_ratio(CropBox(0, 90, 40, 100), TargetSize(64, 64), 200, 100)
    assert (box.y1, box.y2) == (60, 100)


def test_fill_replaces_masked_pixels_with_surrounding_colours():
    image = Image.new("RGB", (32, 32), (0, 200, 0))
    image.paste((255, 0, 0), box=(8, 8, 24, 24))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, box=(8, 8, 24, 24))
    filled = np.asarray(fill_masked(image, mask))
    assert filled[16, 16, 0] < 50 and filled[16, 16, 1] > 150


def test_prepare_mask_refuses_a_size_mismatch():
    with pytest.raises(BadRequest, match="same size"):
        prepare_mask(Image.new("L", (8, 8)), [Image.new("RGB", (16, 16))], MaskSettings(), 0, TargetSize(16, 16))


def test_whole_picture_overlay_keeps_unmasked_pixels_opaque():
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, box=(0, 0, 8, 16))
    prepared = prepare_mask(mask, [Image.new("RGB", (16, 16), (9, 9, 9))], MaskSettings(blur_x=0, blur_y=0), 0,
                            TargetSize(16, 16))
    alpha = np.asarray(prepared.overlays[0])[:, :, 3]
    assert alpha[:, 8:].min() == 255 and alpha[:, :8].max() == 0

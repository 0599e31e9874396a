"""Image plumbing shared by the preprocessors: channel fixing and the extension's resize-with-pad.

The extension runs almost every detector on the input scaled so that its SHORT side equals
the processor resolution (cubic when enlarging, area when shrinking), then edge-padded up to
multiples of 64 because the networks downsample by powers of two; the pad is cut off the
result, so the map a client gets back has the short side = resolution, not a multiple of 64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from gray, RGB or RGBA (alpha composited on white, as the extension does)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, received dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1|3|4) image, received shape {image.shape}")
    if image.shape[2] == 1:
        return np.concatenate([image] * 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        blended = image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return blended.clip(0, 255).astype(np.uint8)
    return image


def pad_to_64(size: int) -> int:
    """How many pixels take `size` up to the next multiple of 64."""
    return int(np.ceil(size / 64.0) * 64 - size)


@dataclass(frozen=True)
class PaddedImage:
    """A resized, edge-padded image and the size to crop results back to."""

    pixels: np.ndarray  # (H_pad, W_pad, 3), both multiples of 64
    height: int
    width: int

    def crop(self, result: np.ndarray) -> np.ndarray:
        """Cut the pad off a map computed on `pixels` (same height and width as `pixels`)."""
        return np.ascontiguousarray(result[: self.height, : self.width])


def resize_short_side(image: np.ndarray, resolution: float) -> np.ndarray:
    """Scale so the short side is `resolution` (rounded), cubic up / area down, like the extension."""
    import cv2

    height, width = image.shape[:2]
    scale = float(resolution) / float(min(height, width))
    target = (int(np.round(width * scale)), int(np.round(height * scale)))
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    return cv2.resize(image, target, interpolation=interpolation)


def resize_with_pad(image: np.ndarray, resolution: float) -> PaddedImage:
    """The extension's resize_image_with_pad: short side to `resolution`, edge pad to multiples of 64."""
    resized = resize_short_side(to_rgb(image), resolution)
    height, width = resized.shape[:2]
    padded = np.pad(resized, [[0, pad_to_64(height)], [0, pad_to_64(width)], [0, 0]], mode="edge")
    return PaddedImage(pixels=np.ascontiguousarray(padded), height=height, width=width)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) → (H, W, 3) by repeating the channel."""
    if gray.ndim == 3:
        gray = gray[:, :, 0]
    return np.repeat(gray[:, :, None], 3, axis=2)

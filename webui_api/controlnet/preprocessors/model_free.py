"""The weight-free preprocessors, computed with numpy and OpenCV as the extension computes them.

Each function takes a `PreprocessCall` and returns an (h, w, 3) uint8 map. The formulas
(thresholds, blur sigmas, the 64x colour grid, the shuffle's random flow) follow the
extension so that a map from this server matches the one its ControlNet models were used with.
"""

from __future__ import annotations

import numpy as np

from .call import PreprocessCall
from .imaging import gray_to_rgb, resize_with_pad


def identity(call: PreprocessCall) -> np.ndarray:
    """none, reference_*, tile_colorfix*: the image itself is the control (or the reference)."""
    return call.image


def invert(call: PreprocessCall) -> np.ndarray:
    """White background with black lines → the black-background map line models expect."""
    return 255 - call.image


def canny(call: PreprocessCall) -> np.ndarray:
    """OpenCV Canny with the low/high thresholds as integers, at the processor resolution."""
    import cv2

    padded = resize_with_pad(call.image, call.resolution)
    edges = cv2.Canny(padded.pixels, int(call.required_a), int(call.required_b))
    return padded.crop(gray_to_rgb(edges))


def blur_gaussian(call: PreprocessCall) -> np.ndarray:
    """Gaussian blur with sigma = threshold A, on the image at the processor resolution."""
    import cv2

    padded = resize_with_pad(call.image, call.resolution)
    return cv2.GaussianBlur(padded.crop(padded.pixels), (0, 0), float(call.required_a))


def scribble_xdog(call: PreprocessCall) -> np.ndarray:
    """Difference of Gaussians (sigma 0.5 and 5), white where twice the darkest-channel DoG exceeds A."""
    import cv2

    padded = resize_with_pad(call.image, call.resolution)
    pixels = padded.pixels.astype(np.float32)
    fine = cv2.GaussianBlur(pixels, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(pixels, (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.zeros_like(padded.pixels)
    strength = 2 * (255 - dog)  # uint8 arithmetic, wrapping above 127 exactly as the extension's does
    result[strength > call.required_a] = 255
    return padded.crop(result)


def threshold(call: PreprocessCall) -> np.ndarray:
    """White where every channel is above threshold A, black elsewhere."""
    padded = resize_with_pad(call.image, call.resolution)
    result = np.zeros_like(padded.pixels)
    result[np.min(padded.pixels, axis=2) > call.required_a] = 255
    return padded.crop(result)


def binary(call: PreprocessCall) -> np.ndarray:
    """Inverted binarisation of the gray image; threshold 0 or 255 means Otsu's automatic threshold."""
    import cv2

    padded = resize_with_pad(call.image, call.resolution)
    gray = cv2.cvtColor(padded.pixels, cv2.COLOR_RGB2GRAY)
    level = int(call.required_a)
    if level in (0, 255):
        _, result = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    else:
        _, result = cv2.threshold(gray, level, 255, cv2.THRESH_BINARY_INV)
    return padded.crop(gray_to_rgb(result))


def color_grid(call: PreprocessCall) -> np.ndarray:
    """t2ia_color_grid: short side to the resolution, then 64x down (cubic) and back up (nearest)."""
    import cv2

    image = _resize_short_side_area(call.image, int(call.resolution))
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(width // 64, 1), max(height // 64, 1)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def _resize_short_side_area(image: np.ndarray, size: int) -> np.ndarray:
    """The colour annotator's own resize: always area interpolation, long side rounded from the ratio."""
    import cv2

    height, width = image.shape[:2]
    if height < width:
        target = (int(round(width / height * size)), size)
    else:
        target = (size, int(round(height / width * size)))
    return cv2.resize(image, target, interpolation=cv2.INTER_AREA)


def tile_resample(call: PreprocessCall) -> np.ndarray:
    """Downsample by the rate in threshold A (area); rates below 1.1 leave the image untouched."""
    import cv2

    rate = float(call.required_a)
    if rate < 1.1:
        return call.image
    height, width = call.image.shape[:2]
    target = (int(width / rate), int(height / rate))
    return cv2.resize(call.image, target, interpolation=cv2.INTER_AREA)


def lineart_standard(call: PreprocessCall) -> np.ndarray:
    """Dark strokes against a blurred (sigma 6) copy, scaled so the median stroke maps to 127."""
    import cv2

    padded = resize_with_pad(call.image, call.resolution)
    pixels = padded.pixels.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(pixels, (0, 0), 6.0) - pixels, axis=2).clip(0, 255)
    strokes = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strokes))) if strokes.size else 16.0
    result = (intensity * 127).clip(0, 255).astype(np.uint8)
    return padded.crop(gray_to_rgb(result))


def recolor_luminance(call: PreprocessCall) -> np.ndarray:
    """Gamma-corrected lightness. The extension converts from BGR although it holds RGB; kept for parity."""
    import cv2

    lightness = cv2.cvtColor(call.image, cv2.COLOR_BGR2LAB)[:, :, 0]
    return gray_to_rgb(_gamma(lightness, float(call.required_a)))


def recolor_intensity(call: PreprocessCall) -> np.ndarray:
    """Gamma-corrected HSV value (the brightest channel)."""
    import cv2

    value = cv2.cvtColor(call.image, cv2.COLOR_BGR2HSV)[:, :, 2]
    return gray_to_rgb(_gamma(value, float(call.required_a)))


def _gamma(channel: np.ndarray, gamma: float) -> np.ndarray:
    scaled = (channel.astype(np.float32) / 255.0) ** gamma
    return (scaled * 255.0).clip(0, 255).astype(np.uint8)


def shuffle(call: PreprocessCall) -> np.ndarray:
    """Content shuffle: remap the image through a smooth random flow field drawn from `call.rng`."""
    import cv2

    padded = resize_with_pad(call.image, call.resolution)
    image = padded.crop(padded.pixels)
    height, width = image.shape[:2]
    flow_x = _noise_disk(call.rng, height, width, 256) * float(width - 1)
    flow_y = _noise_disk(call.rng, height, width, 256) * float(height - 1)
    flow = np.concatenate([flow_x, flow_y], axis=2).astype(np.float32)
    return cv2.remap(image, flow, None, cv2.INTER_LINEAR)


def _noise_disk(rng: np.random.RandomState, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1]: uniform values on a coarse grid, cubic-upsampled, min-max normalised."""
    import cv2

    coarse = rng.uniform(low=0, high=1, size=(height // cell + 2, width // cell + 2, 1))
    fine = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = fine[cell : cell + height, cell : cell + width]
    noise = noise - np.min(noise)
    noise = noise / np.max(noise)
    return noise[:, :, None]

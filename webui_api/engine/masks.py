"""Inpainting masks on the pixel side, PIL and numpy only (no torch): A1111's binary mask,
invert, separable Gaussian blur, "whole picture" resize, masked-content fill and the overlay
that gives unmasked pixels back unchanged.

White (255) in a mask means "repaint"; black means "keep".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from webui_api.engine.image_prep import TargetSize, check_pixels, resize_image
from webui_api.errors import BadRequest

FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))  # (blur radius, repeats) of A1111's fill


@dataclass(frozen=True)
class MaskSettings:
    """The request's mask fields, resolved."""

    invert: bool = False
    blur_x: int = 4
    blur_y: int = 4
    round: bool = True
    fill: int = 0  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    full_res: bool = False
    full_res_padding: int = 0


@dataclass(frozen=True)
class CropBox:
    """A pixel box (x1, y1, x2, y2), x2/y2 exclusive, as PIL's crop takes it."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)


@dataclass(frozen=True)
class PreparedMask:
    """A mask ready for the engine: `mask` (L, job size) drives the latent blend; `overlay`
    per init image (RGBA, the init image's size) is composited over the output; `paste_to`
    (full-res inpainting) is where the generated crop goes back into the original."""

    mask: Image.Image | None
    overlays: tuple[Image.Image, ...]
    images: tuple[Image.Image, ...]  # job-size init images after crop and masked-content fill
    paste_to: CropBox | None = None
    infotext: tuple[tuple[str, object], ...] = ()


def binary_mask(mask: Image.Image, round_alpha: bool) -> Image.Image:
    """A1111's create_binary_mask: a varying alpha channel is the mask (thresholded at 128
    when rounding); otherwise the greyscale image, grey values kept."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.split()[-1]
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_alpha else alpha
    return mask.convert("L")


def gaussian_kernel(sigma: float) -> np.ndarray:
    """OpenCV's kernel for GaussianBlur with size 2*int(2.5*sigma + 0.5) + 1."""
    radius = int(2.5 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets**2) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def _blur_axis(pixels: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """One separable pass with reflect-101 borders (OpenCV's default)."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(pixels, pad, mode="reflect") if pixels.shape[axis] > radius else np.pad(pixels, pad, mode="edge")
    moved = np.moveaxis(padded, axis, -1)
    windows = np.lib.stride_tricks.sliding_window_view(moved, len(kernel), axis=-1)
    return np.moveaxis(windows @ kernel, -1, axis)


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """The X pass then the Y pass, each skipped when its radius is 0; uint8 rounded."""
    pixels = np.asarray(mask, dtype=np.float64)
    if blur_x > 0:
        pixels = np.clip(np.rint(_blur_axis(pixels, blur_x, 1)), 0, 255)
    if blur_y > 0:
        pixels = np.clip(np.rint(_blur_axis(pixels, blur_y, 0)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), mode="L")


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's masking.fill: the masked area is painted with ever less blurred copies of the
    kept area, so it holds the surrounding colours instead of the original content."""
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    result = kept.convert("RGBA")
    for radius, repeats in FILL_PASSES:
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def overlay_for(image: Image.Image, overlay_mask: Image.Image) -> Image.Image:
    """The original pixels where the mask keeps them (alpha = inverted mask), to paste over
    the output so unmasked pixels come back unchanged."""
    overlay = Image.new("RGBa", image.size)
    overlay.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask.convert("L")))
    return overlay.convert("RGBA")


def processed_mask(mask: Image.Image, settings: MaskSettings) -> Image.Image:
    """Binary mask, inverted if asked, blurred (A1111's init, before any resize)."""
    check_pixels(mask, "mask")
    image_mask = binary_mask(mask, settings.round)
    if settings.invert:
        image_mask = ImageOps.invert(image_mask)
    return blur_mask(image_mask, settings.blur_x, settings.blur_y)


def mask_infotext(settings: MaskSettings, cropped: bool) -> tuple[tuple[str, object], ...]:
    """The infotext keys A1111 adds for a mask, in its order."""
    keys: list[tuple[str, object]] = []
    if settings.invert:
        keys.append(("Mask mode", "Inpaint not masked"))
    if settings.blur_x > 0 or settings.blur_y > 0:
        keys.append(("Mask blur", settings.blur_x if settings.blur_x == settings.blur_y else None))
    if cropped:
        keys += [("Inpaint area", "Only masked"), ("Masked area padding", settings.full_res_padding)]
    if settings.fill == 0:
        keys.append(("Masked content", "fill"))
    return tuple(keys)


def prepare_mask(
    mask: Image.Image, flat_images: list[Image.Image], settings: MaskSettings, resize_mode: int, size: TargetSize
) -> PreparedMask:
    """A1111's inpainting init: "only masked" (crop around the mask, generate at the job
    size, paste back) or "whole picture" (mask resized like the images). `flat_images` are
    the flattened init images at their own size; the mask must have that size too."""
    check_same_size(mask, flat_images)
    blurred = processed_mask(mask, settings)
    crop = crop_region(blurred, settings.full_res_padding, size) if settings.full_res else None
    if settings.full_res and crop is None:  # blank mask: plain img2img, A1111 keeps the early keys
        early = tuple(key for key in mask_infotext(settings, False) if key[0] in ("Mask mode", "Mask blur"))
        return PreparedMask(
            mask=None, overlays=(), images=tuple(_resized(flat_images, resize_mode, size)), infotext=early
        )
    if crop is not None:
        image_mask = resize_image(2, blurred.crop(crop.as_tuple).convert("RGB"), size).convert("L")
        overlays = tuple(overlay_for(image, blurred) for image in flat_images)
        images = [resize_image(2, image.crop(crop.as_tuple), size) for image in flat_images]
    else:
        image_mask = resize_image(2 if resize_mode == 3 else resize_mode, blurred.convert("RGB"), size).convert("L")
        images = _resized(flat_images, resize_mode, size)
        check_sizes(images, size)
        overlays = tuple(overlay_for(image, image_mask.point(lambda v: min(v * 2, 255))) for image in images)
    filled = tuple(images if settings.fill == 1 else (fill_masked(image, image_mask) for image in images))
    infotext = mask_infotext(settings, crop is not None)
    return PreparedMask(mask=image_mask, overlays=overlays, images=filled, paste_to=crop, infotext=infotext)


def _resized(images: list[Image.Image], resize_mode: int, size: TargetSize) -> list[Image.Image]:
    return list(images) if resize_mode == 3 else [resize_image(resize_mode, image, size) for image in images]


def check_same_size(mask: Image.Image, images: list[Image.Image]) -> None:
    """The mask must cover the init images pixel for pixel."""
    for image in images:
        if image.size != mask.size:
            raise BadRequest(
                f"mask is {mask.width}x{mask.height} but the init image is {image.width}x{image.height}; "
                "they must have the same size"
            )


def crop_region(mask: Image.Image, padding: int, size: TargetSize) -> CropBox | None:
    """A1111's get_crop_region_v2 + expand_crop_region: the mask's bounding box plus padding,
    clamped, then grown to the job's aspect ratio; None for an empty mask."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, mask.width), min(y2 + padding, mask.height)
    return expand_to_ratio(CropBox(x1, y1, x2, y2), size, mask.width, mask.height)


def expand_to_ratio(box: CropBox, size: TargetSize, image_w: int, image_h: int) -> CropBox:
    """Grow the short side of the box to the job's aspect ratio, shifted back inside the image."""
    ratio = size.width / size.height
    width, height = box.x2 - box.x1, box.y2 - box.y1
    if width / height > ratio:
        y1, y2 = _grow(box.y1, box.y2, int(width / ratio - height), image_h)
        return CropBox(box.x1, y1, box.x2, y2)
    x1, x2 = _grow(box.x1, box.x2, int(height * ratio - width), image_w)
    return CropBox(x1, box.y1, x2, box.y2)


def _grow(low: int, high: int, extra: int, limit: int) -> tuple[int, int]:
    """Add `extra` split around (low, high), then shift back into [0, limit]."""
    low, high = low - extra // 2, high + (extra - extra // 2)
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        high, low = high - low, 0
    return low, min(high, limit)


def check_sizes(images: list[Image.Image], size: TargetSize) -> None:
    """Inpainting needs the init images at the job size (resize_mode 3 keeps them as sent)."""
    for image in images:
        if image.size != (size.width, size.height):
            raise BadRequest(
                f"inpainting with resize_mode 3 needs init images of the job size {size.width}x{size.height}; "
                f"received {image.width}x{image.height}"
            )


def paste_back(output: Image.Image, box: CropBox, original_size: tuple[int, int]) -> Image.Image:
    """Full-res inpainting: the generated crop resized into its box of a transparent canvas
    of the original size (A1111 resizes with mode 1, crop and resize)."""
    piece = resize_image(1, output, TargetSize(box.x2 - box.x1, box.y2 - box.y1))
    canvas = Image.new("RGBA", original_size)
    canvas.paste(piece, box=(box.x1, box.y1))
    return canvas


def apply_overlay(output: Image.Image, overlay: Image.Image) -> Image.Image:
    """Composite the kept original pixels over a decoded output image."""
    if output.size != overlay.size:
        raise ValueError(f"overlay is {overlay.size}, output {output.size}")
    result = output.convert("RGBA")
    result.alpha_composite(overlay)
    return result.convert("RGB")


def finish_output(output: Image.Image, overlay: Image.Image, paste_to: CropBox | None, composite: bool) -> Image.Image:
    """A decoded output as A1111 hands it back: pasted into the original (full-res), with
    the kept original pixels composited on top unless the overlay_inpaint option is off."""
    if paste_to is not None:
        output = paste_back(output, paste_to, overlay.size)
    if not composite:
        return output.convert("RGB")
    result = output.convert("RGBA")
    result.alpha_composite(overlay)
    return result.convert("RGB")

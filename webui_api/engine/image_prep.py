"""img2img init-image preparation with PIL only (no torch): flatten, A1111's resize modes.

Kept torch-free so the request side (job building, on a thread of the HTTP server) can
validate and resize images before a job is queued; the worker only encodes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageColor

from webui_api.errors import BadRequest

MAX_INIT_PIXELS = 8192 * 8192  # larger init images are refused before any resize work
RESIZE_MODES = {0: "Just resize", 1: "Crop and resize", 2: "Resize and fill", 3: "Just resize (latent upscale)"}


@dataclass(frozen=True)
class TargetSize:
    """The job's output size in pixels."""

    width: int
    height: int


def check_pixels(image: Image.Image, what: str) -> None:
    """Refuse absurdly large images loudly instead of running out of memory later."""
    if image.width * image.height > MAX_INIT_PIXELS:
        raise BadRequest(
            f"{what} is {image.width}x{image.height} = {image.width * image.height} pixels; "
            f"at most {MAX_INIT_PIXELS} are accepted"
        )
    if image.width < 1 or image.height < 1:
        raise BadRequest(f"{what} is empty ({image.width}x{image.height})")


def flatten(image: Image.Image, background: str) -> Image.Image:
    """A1111's images.flatten: transparent pixels are composited over the background colour
    (option img2img_background_color), then the image is RGB."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        try:
            colour = ImageColor.getrgb(background)
        except ValueError as err:
            raise BadRequest(f"img2img_background_color {background!r} is not a colour") from err
        canvas = Image.new("RGBA", image.size, colour[:3] + (255,))
        canvas.alpha_composite(image.convert("RGBA"))
        return canvas.convert("RGB")
    return image.convert("RGB")


def plain_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """The resize step with upscaler None: a plain LANCZOS resize (what A1111's default
    upscaler_for_img2img does)."""
    return image.resize((width, height), resample=Image.Resampling.LANCZOS)


def resize_image(mode: int, image: Image.Image, size: TargetSize) -> Image.Image:
    """A1111's images.resize_image for modes 0-2; mode 3 (latent upscale) falls into mode 2's
    branch as in A1111 (it is only called that way for masks; init images skip the call)."""
    if mode not in RESIZE_MODES:
        raise BadRequest(f"resize_mode must be one of {sorted(RESIZE_MODES)}, received {mode}")
    if mode == 0:
        return plain_resize(image, size.width, size.height)
    if mode == 1:
        return _crop_and_resize(image, size)
    return _resize_and_fill(image, size)


def _crop_and_resize(image: Image.Image, size: TargetSize) -> Image.Image:
    """Mode 1: cover the target keeping the aspect ratio, centre-cropped."""
    ratio, src_ratio = size.width / size.height, image.width / image.height
    src_w = size.width if ratio > src_ratio else image.width * size.height // image.height
    src_h = size.height if ratio <= src_ratio else image.height * size.width // image.width
    resized = plain_resize(image, src_w, src_h)
    canvas = Image.new("RGB", (size.width, size.height))
    canvas.paste(resized, box=(size.width // 2 - src_w // 2, size.height // 2 - src_h // 2))
    return canvas


def _resize_and_fill(image: Image.Image, size: TargetSize) -> Image.Image:
    """Mode 2: fit inside the target keeping the aspect ratio; the bars repeat the edge
    rows or columns of the resized image."""
    ratio, src_ratio = size.width / size.height, image.width / image.height
    src_w = size.width if ratio < src_ratio else image.width * size.height // image.height
    src_h = size.height if ratio >= src_ratio else image.height * size.width // image.width
    resized = plain_resize(image, src_w, src_h)
    canvas = Image.new("RGB", (size.width, size.height))
    canvas.paste(resized, box=(size.width // 2 - src_w // 2, size.height // 2 - src_h // 2))
    if ratio < src_ratio:
        _fill_rows(canvas, resized, size, src_h)
    elif ratio > src_ratio:
        _fill_columns(canvas, resized, size, src_w)
    return canvas


def _fill_rows(canvas: Image.Image, resized: Image.Image, size: TargetSize, src_h: int) -> None:
    fill = size.height // 2 - src_h // 2
    if fill <= 0:
        return
    top = resized.resize((size.width, fill), box=(0, 0, size.width, 0))
    bottom = resized.resize((size.width, fill), box=(0, resized.height, size.width, resized.height))
    canvas.paste(top, box=(0, 0))
    canvas.paste(bottom, box=(0, fill + src_h))


def _fill_columns(canvas: Image.Image, resized: Image.Image, size: TargetSize, src_w: int) -> None:
    fill = size.width // 2 - src_w // 2
    if fill <= 0:
        return
    left = resized.resize((fill, size.height), box=(0, 0, 0, size.height))
    right = resized.resize((fill, size.height), box=(resized.width, 0, resized.width, size.height))
    canvas.paste(left, box=(0, 0))
    canvas.paste(right, box=(fill + src_w, 0))


def prepare_init_image(image: Image.Image, mode: int, size: TargetSize, background: str) -> Image.Image:
    """Flatten and resize one init image as A1111's img2img init does (mode 3: no pixel resize)."""
    check_pixels(image, "init image")
    flat = flatten(image, background)
    return flat if mode == 3 else resize_image(mode, flat, size)


def batch_init_images(images: list[Image.Image], batch_size: int) -> tuple[list[Image.Image], int]:
    """A1111's count rule: one image is repeated batch_size times; 2..batch_size images set
    the batch size to their count; more images than batch_size are refused."""
    if not images:
        raise BadRequest("init_images is empty; at least one image is needed")
    if len(images) == 1:
        return images * batch_size, batch_size
    if len(images) > batch_size:
        raise BadRequest(f"bad number of images passed: {len(images)} init images for batch_size {batch_size}")
    return list(images), len(images)

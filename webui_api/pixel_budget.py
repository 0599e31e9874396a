"""The one pixel budget for every image the server decodes or builds outside the UNet.

A small PNG can decode to gigapixels, and an upscale factor or a ControlNet resolution can
ask for an image no machine holds. Every base64 image goes through one decoder
(`postprocess.encode.decode_image_base64`), which reads the header first and asks this
module whether the pixel count fits; output sizes computed from request numbers (extras
upscales, detect resolutions, seed-resize noise) ask the same question.

Why a context variable and not an argument: the decoder is called from deep inside job
building (init images, masks, ControlNet units, scripts), and threading the configured
limit through every one of those signatures would leave a new call site unguarded by
default. The configured budget is set where work starts: once per request (an ASGI
middleware), once per async task (the task runner), and once per worker lane thread for its
whole life (the scheduler's lane scope, built from the settings in app.build_runtime; a Ray
replica sets it around each call), because a new thread starts with a fresh context. Code
running outside all of these (tests, a bare Scheduler) gets the default budget, never an
unlimited one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from .errors import LimitExceeded

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # the default of --max-input-pixels

_budget: ContextVar[int] = ContextVar("webui_api_pixel_budget", default=DEFAULT_MAX_IMAGE_PIXELS)


def current_budget() -> int:
    """Pixels one image may have in the current request (0: no limit)."""
    return _budget.get()


@contextlib.contextmanager
def pixel_budget(max_pixels: int) -> Iterator[None]:
    """Run the enclosed code (and the threads it starts with a copied context) under a budget."""
    token = _budget.set(max_pixels)
    try:
        yield
    finally:
        _budget.reset(token)


def check_image_pixels(what: str, width: int, height: int, flag: str = "--max-input-pixels") -> None:
    """413 when an image of width x height is over the budget (or has a nonsensical size)."""
    if width < 0 or height < 0:
        raise LimitExceeded(f"{what} ({width}x{height})", "a negative size", "positive sizes", flag)
    limit = current_budget()
    if limit and width * height > limit:
        raise LimitExceeded(f"{what} ({width}x{height})", width * height, limit, flag, status=413)

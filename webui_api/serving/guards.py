"""Request guards: refuse oversized work before it reaches the queue.

One shared GPU must not be taken down by one request: a 8192x8192 image, a batch of 500,
10 000 steps, a megabyte of prompt, a 2 GB body, or a small PNG that decodes to gigapixels
(a decompression bomb). Each limit is a flag with a default that legitimate A1111 clients
never reach; a violation is a 4xx whose message names the limit, the flag and the value.
Image headers are read (PIL opens lazily) before any pixel is decoded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import LimitExceeded
from ..pixel_budget import pixel_budget
from .script_budget import DEFAULT_MAX_SCRIPT_IMAGES, DEFAULT_MAX_SCRIPT_WORK, ScriptLimits

__all__ = [
    "BodySizeLimit",
    "LimitExceeded",
    "PixelBudgetScope",
    "RequestLimits",
    "check_generation",
    "check_input_images",
    "check_job",
]


@dataclass(frozen=True)
class RequestLimits:
    """The guard limits; 0 disables a limit."""

    max_pixels: int = 2048 * 2048  # width x height of the output (hires target included)
    max_batch: int = 64  # batch_size x n_iter
    max_steps: int = 1000  # A1111's UI stops at 150, but API clients (and long-job tests) go higher
    max_prompt_length: int = 20_000  # characters in prompt / negative_prompt
    max_body_bytes: int = 64 * 1024 * 1024
    max_input_pixels: int = 4096 * 4096  # pixels of each decoded input image
    max_script_images: int = DEFAULT_MAX_SCRIPT_IMAGES  # images of one script run, all its jobs together
    max_script_work: int = DEFAULT_MAX_SCRIPT_WORK  # step-megapixels of one script run (serving.script_budget)

    @property
    def script_limits(self) -> ScriptLimits:
        """The whole-script budget's limits (one script run: an x/y/z plot, a prompt list)."""
        return ScriptLimits(self.max_script_images, self.max_script_work)


def _over(value: float | None, limit: int) -> bool:
    return bool(limit) and value is not None and value > limit


def check_generation(request: Any, limits: RequestLimits) -> None:
    """Size, batch, steps, prompt length and input images of a txt2img/img2img request."""
    _check_size(request, limits)
    batch = (request.batch_size or 1) * (request.n_iter or 1)
    if _over(batch, limits.max_batch):
        raise LimitExceeded("batch_size x n_iter", batch, limits.max_batch, "--max-batch")
    for name in ("steps", "hr_second_pass_steps"):
        steps = getattr(request, name, None)
        if _over(steps, limits.max_steps):
            raise LimitExceeded(name, steps, limits.max_steps, "--max-steps")
    for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
        check_prompt_length(name, getattr(request, name, None), limits)
    check_input_images(_request_images(request), limits.max_input_pixels)


def check_prompt_length(name: str, text: Any, limits: RequestLimits) -> None:
    """A prompt sent as a list (one per image) counts all its characters: a list is no way
    around --max-prompt-length."""
    if isinstance(text, (list, tuple)):
        length = sum(len(part) for part in text if isinstance(part, str))
    elif isinstance(text, str):
        length = len(text)
    else:
        return
    if _over(length, limits.max_prompt_length):
        raise LimitExceeded(f"the length of {name}", length, limits.max_prompt_length, "--max-prompt-length")


def check_job(job: Any, limits: RequestLimits) -> None:
    """The same limits on a resolved GenerationJob: what scripts plan (prompts-from-file
    lines, x/y/z cells, sd upscale tiles) passes here, so no script argument can raise the
    size, steps, batch or prompt length above what a direct request may ask for."""
    pixels = job.width * job.height
    if _over(pixels, limits.max_pixels):
        raise LimitExceeded(f"width x height ({job.width}x{job.height})", pixels, limits.max_pixels, "--max-pixels")
    if job.hires is not None:
        target = job.hires.upscale_width * job.hires.upscale_height
        if _over(target, limits.max_pixels):
            raise LimitExceeded(f"the hires fix size ({job.hires.upscale_width}x{job.hires.upscale_height})", target,
                                limits.max_pixels, "--max-pixels")
        if _over(job.hires.steps, limits.max_steps):
            raise LimitExceeded("hr_second_pass_steps", job.hires.steps, limits.max_steps, "--max-steps")
    if _over(job.image_count, limits.max_batch):
        raise LimitExceeded("batch_size x n_iter", job.image_count, limits.max_batch, "--max-batch")
    if _over(job.sampling.steps, limits.max_steps):
        raise LimitExceeded("steps", job.sampling.steps, limits.max_steps, "--max-steps")
    seed_pixels = job.seeds.seed_resize_from_w * job.seeds.seed_resize_from_h
    if _over(seed_pixels, limits.max_pixels):
        raise LimitExceeded("seed_resize_from_w x seed_resize_from_h", seed_pixels, limits.max_pixels, "--max-pixels")
    for name, texts in (("prompt", job.prompts), ("negative_prompt", job.negative_prompts)):
        longest = max((len(text) for text in texts), default=0)
        if _over(longest, limits.max_prompt_length):
            raise LimitExceeded(f"the length of {name}", longest, limits.max_prompt_length, "--max-prompt-length")


def _check_size(request: Any, limits: RequestLimits) -> None:
    width, height = request.width or 512, request.height or 512
    if _over(width * height, limits.max_pixels):
        raise LimitExceeded(f"width x height ({width}x{height})", width * height, limits.max_pixels, "--max-pixels")
    seed_w, seed_h = max(request.seed_resize_from_w or 0, 0), max(request.seed_resize_from_h or 0, 0)
    if _over(seed_w * seed_h, limits.max_pixels):  # noise of that size is drawn before it is cropped
        raise LimitExceeded(f"seed_resize_from_w x seed_resize_from_h ({seed_w}x{seed_h})", seed_w * seed_h,
                            limits.max_pixels, "--max-pixels")
    if getattr(request, "enable_hr", False):
        target = hires_target(request, width, height)
        if _over(target[0] * target[1], limits.max_pixels):
            raise LimitExceeded(f"the hires fix size ({target[0]}x{target[1]})", target[0] * target[1],
                                limits.max_pixels, "--max-pixels")


def hires_target(request: Any, width: int, height: int) -> tuple[int, int]:
    """The second pass size: hr_resize_x/y when given (one may follow the aspect), else hr_scale."""
    rx, ry = request.hr_resize_x or 0, request.hr_resize_y or 0
    if rx or ry:
        return (rx or round(ry * width / height)), (ry or round(rx * height / width))
    scale = request.hr_scale or 2.0
    return int(width * scale), int(height * scale)


def _request_images(request: Any) -> Iterable[Any]:
    yield from getattr(request, "init_images", None) or ()
    for name in ("mask", "latent_mask"):
        value = getattr(request, name, None)
        if value:
            yield value


def check_input_images(images: Iterable[Any], max_pixels: int) -> None:
    """Read each image's header only and refuse one whose pixel count is over the limit
    (before queueing; the decoder checks the same budget again whenever it decodes)."""
    from ..postprocess.encode import image_size_base64

    with pixel_budget(max_pixels):
        for index, data in enumerate(images):
            if not isinstance(data, str) or data.startswith(("http://", "https://")):
                continue  # the decoder reports those with its own message
            image_size_base64(data, f"input image #{index + 1}")


class PixelBudgetScope:
    """ASGI middleware: every request runs under the configured image pixel budget
    (--max-input-pixels), which the one image decoder and the output-size checks read."""

    def __init__(self, app: Any, max_pixels: int) -> None:
        self.app = app
        self.max_pixels = max_pixels

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        with pixel_budget(self.max_pixels):
            await self.app(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: 413 for a body over the limit, from Content-Length or while streaming.

    Checked before any route parses JSON, so a huge body is never held in memory whole."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.max_bytes:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, declared)
            return
        await self._counting(scope, receive, send)

    async def _counting(self, scope: dict, receive: Any, send: Any) -> None:
        """No Content-Length (chunked upload): read the body first, counting, then replay it."""
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await self._refuse(send, seen)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        await self.app(scope, _replay(messages, receive), send)

    async def _refuse(self, send: Any, size: int) -> None:
        from fastapi.responses import JSONResponse

        error = LimitExceeded("the request body", f"{size} bytes", f"{self.max_bytes} bytes", "--max-body-mb", 413)
        response = JSONResponse(status_code=413, content=error.to_body())
        await response({"type": "http"}, _no_receive, send)


def _replay(messages: list[dict], receive: Any) -> Any:
    """A receive() that hands out the buffered messages, then the connection's own."""
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

"""What every generation request goes through before it becomes a job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidImageFormat
from ..job_builder import apply_infotext, request_styles
from ..runtime import Runtime
from ..serving.context import RequestContext
from ..styles import PromptStyle, style_files


@dataclass(frozen=True)
class PreparedRequest:
    """A request with a pasted infotext applied, its per-job options and the styles it named."""

    request: Any  # Txt2ImgRequest | Img2ImgRequest
    options: dict[str, Any]
    styles: tuple[PromptStyle, ...]


def prepare(request: Any, runtime: Runtime, context: RequestContext | None = None) -> PreparedRequest:
    """Read the styles, paste a sent infotext into the fields the client left out, apply the
    serving guards (size, batch, steps, prompt, input images; 503 while draining) and the
    content policy's prompt filter for the caller's tier, take the per-job options and refuse
    an unusable output format, all before any queueing."""
    styles = request_styles(request, style_files(runtime.settings))
    request = apply_infotext(request, runtime.options.snapshot(), styles)
    runtime.serving.check(request, context)
    options = runtime.options.with_overrides(request.override_settings or {})
    check_output_format(options)
    return PreparedRequest(request, options, tuple(styles))


def check_output_format(options: Mapping[str, Any]) -> None:
    """An unusable samples_format is refused before any work, not after the images exist."""
    from ..postprocess.encode import SUPPORTED_FORMATS

    fmt = str(options.get("samples_format", "png")).lower()
    if fmt not in SUPPORTED_FORMATS:
        raise InvalidImageFormat(fmt)

"""A structured audit trail: one JSON line per generation request.

Who (key or user name, never the secret), which route, the parameters without image data,
the seeds actually used, timings, whether the cache answered, and the SHA-256 of every output
image, so an operator can later tell which request produced a given file. Written by one
process-local lock-guarded appender; rotate the file with logrotate (copytruncate) if needed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IMAGE_FIELDS = frozenset({"init_images", "mask", "latent_mask"})
SECRET_FIELDS = frozenset({"callback_url"})  # may carry a token in its query string
LONG_STRING = 512  # longer strings in parameters are image data in practice: replaced by a digest


class AuditLog:
    """Appends JSON lines to `path`; a None path disables it."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        try:
            with self._lock, self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:
            log.error("audit log %s not writable: %s", self.path, exc)


def generation_entry(
    *, caller: str, route: str, params: dict[str, Any], response: dict[str, Any] | None,
    timings: dict[str, float | None], cache: str, task_id: str | None = None, error: str | None = None,
) -> dict[str, Any]:
    """The audit line of one generation (successful when `response` is given)."""
    info = _info(response)
    return {
        "time": datetime.now(timezone.utc).isoformat(),
        "caller": caller,
        "route": route,
        "task_id": task_id,
        "status": "error" if error else "ok",
        "error": error,
        "cache": cache,
        "params": scrub(params),
        "seeds": info.get("all_seeds"),
        "subseeds": info.get("all_subseeds"),
        "timings": {name: round(value, 4) for name, value in timings.items() if value is not None},
        "images_sha256": [image_digest(image) for image in (response or {}).get("images") or []],
    }


def _info(response: dict[str, Any] | None) -> dict[str, Any]:
    try:
        info = json.loads((response or {}).get("info") or "{}")
    except (TypeError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def scrub(params: Any) -> Any:
    """Parameters without image data or secrets: images become their digest and size."""
    if isinstance(params, dict):
        return {key: _scrub_field(key, value) for key, value in params.items() if key not in SECRET_FIELDS}
    if isinstance(params, list):
        return [scrub(item) for item in params]
    if isinstance(params, str) and len(params) > LONG_STRING:
        return f"<{len(params)} chars sha256:{hashlib.sha256(params.encode()).hexdigest()[:16]}>"
    return params


def _scrub_field(key: str, value: Any) -> Any:
    if key in IMAGE_FIELDS and value:
        items = value if isinstance(value, list) else [value]
        return [f"<image sha256:{image_digest(item)[:16]}>" for item in items]
    return scrub(value)


def image_digest(b64: Any) -> str:
    """SHA-256 of the image file bytes (of the string itself when it is not base64)."""
    text = str(b64)
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = text.encode()
    return hashlib.sha256(raw).hexdigest()

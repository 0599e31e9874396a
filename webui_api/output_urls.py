"""Outputs by URL: generated images stored under the data dir and answered as signed,
expiring URLs instead of base64 (opt-in: the request's `output_urls`, or `--output-urls`).

A URL names a random file and carries its expiry time and an HMAC of both, made with a
secret drawn when the server starts: it cannot be guessed, altered or extended, and it dies
with the process. The route that serves it also sits behind the API's authentication. Files
are deleted once they expire (checked at start and then at most once a minute, on the next
store), so the folder holds at most one retention period of images.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ApiError, BadRequest, NotFound
from .paths import resolve_inside

OUTPUTS_FOLDER = Path("outputs") / "api-urls"  # under the data dir
URL_PREFIX = "/sdapi/v1/outputs/"
PURGE_EVERY_SECONDS = 60.0
_EXTENSIONS = {"iVBOR": "png", "/9j/": "jpg", "UklGR": "webp"}  # by the first base64 characters
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


class UrlExpired(ApiError):
    """A signed output URL whose time is up; its file is gone or about to be (410)."""

    status_code = 410


@dataclass(frozen=True)
class StoredOutput:
    name: str
    expires: int  # unix time

    def query(self, signature: str) -> str:
        return f"expires={self.expires}&sig={signature}"


class OutputStore:
    """Stores images, signs their URLs, checks the URLs clients bring back, purges expired files."""

    def __init__(self, folder: Path, ttl_seconds: float, secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"the output URL lifetime must be positive, got {ttl_seconds}")
        self.folder = folder
        self.ttl_seconds = ttl_seconds
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock
        self._lock = threading.Lock()
        self._next_purge = 0.0

    # writing -----------------------------------------------------------------------------

    def store(self, image_base64: str) -> StoredOutput:
        """Write one base64 image (as the API encoded it) and return its name and expiry."""
        self.purge_when_due()
        extension = _extension(image_base64)
        try:
            data = base64.b64decode(image_base64, validate=True)
        except binascii.Error as exc:  # our own encoder wrote it: this is a bug, not the client's input
            raise ValueError("an output image is not valid base64") from exc
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{secrets.token_urlsafe(18)}.{extension}"
        resolve_inside(self.folder, name, what="output URL file").write_bytes(data)  # the data dir's path rule
        return StoredOutput(name, int(self._clock() + self.ttl_seconds))

    def url(self, stored: StoredOutput, base_url: str) -> str:
        """The absolute URL of a stored output (`base_url` ends before /sdapi)."""
        return f"{base_url.rstrip('/')}{URL_PREFIX}{stored.name}?{stored.query(self.sign(stored))}"

    def images_to_urls(self, body: dict[str, Any], base_url: str) -> dict[str, Any]:
        """A generation response with every base64 image replaced by its URL."""
        urls = [self.url(self.store(image), base_url) for image in body.get("images") or []]
        return {**body, "images": urls}

    def sign(self, stored: StoredOutput) -> str:
        message = f"{stored.name}:{stored.expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:40]

    # reading -----------------------------------------------------------------------------

    def open(self, name: str, expires: int, signature: str) -> tuple[Path, str]:
        """The file behind a URL and its media type; 404 for a wrong signature or name (no hint
        whether it exists), 410 once expired."""
        stored = StoredOutput(name, expires)
        if not hmac.compare_digest(self.sign(stored).encode(), (signature or "").encode("utf-8", "replace")):
            raise NotFound("Output not found")
        if self._clock() > expires:
            raise UrlExpired("This output URL has expired", errors=f"it was valid until {expires} (unix time)")
        extension = name.rsplit(".", 1)[-1]
        if "/" in name or "\\" in name or extension not in MEDIA_TYPES:
            raise NotFound("Output not found")
        path = resolve_inside(self.folder, name, what="output URL file")
        if not path.is_file():
            raise NotFound("Output not found")
        return path, MEDIA_TYPES[extension]

    # retention ---------------------------------------------------------------------------

    def purge_when_due(self) -> None:
        with self._lock:
            if self._clock() < self._next_purge:
                return
            self._next_purge = self._clock() + PURGE_EVERY_SECONDS
        self.purge_expired()

    def purge_expired(self) -> int:
        """Delete stored images older than the URL lifetime; returns how many."""
        if not self.folder.is_dir():
            return 0
        oldest = self._clock() - self.ttl_seconds
        removed = 0
        for path in self.folder.iterdir():
            if path.is_file() and path.stat().st_mtime < oldest:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def wants_urls(requested: bool | None, server_default: bool) -> bool:
    """A request's `output_urls` decides; when it sent none, the server's --output-urls does."""
    return server_default if requested is None else bool(requested)


def _extension(image_base64: str) -> str:
    for start, extension in _EXTENSIONS.items():
        if image_base64.startswith(start):
            return extension
    raise BadRequest("Only PNG, JPEG and WEBP outputs can be returned as URLs")

"""A structured audit trail: one JSON line per generation request, and one per other
submission of work (ControlNet detect, extras, refused requests...) that wrote none.

Who (key or user name, never the secret), which route, the parameters without image data,
the seeds actually used, timings, whether the cache answered, and the SHA-256 of every output
image, so an operator can later tell which request produced a given file.

Shared deployments need this trail, and it holds what users typed, so it is bounded: the file
rotates by size and by age (audit.jsonl -> audit.jsonl.1 -> ...), at most `keep_files` rotated
files are kept, and rotated files older than `retention_days` are deleted. `redact_prompts`
writes prompt texts as their length only. `--audit-log off` turns the whole log off.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IMAGE_FIELDS = frozenset({"init_images", "mask", "latent_mask"})
SECRET_FIELDS = frozenset({"callback_url"})  # may carry a token in its query string
LONG_STRING = 512  # longer strings in parameters are image data in practice: replaced by a digest
PROMPT_FIELDS = frozenset({"script_args", "inputs"})  # besides every key with "prompt" in its name


@dataclass(frozen=True)
class AuditPolicy:
    """How much of the trail is kept (--audit-log-max-mb, --audit-log-keep,
    --audit-log-retention-days, --audit-log-rotate-hours, --audit-redact-prompts)."""

    max_bytes: int = 50 * 1024 * 1024
    keep_files: int = 10
    retention_days: float = 30.0
    rotate_seconds: float = 24 * 3600.0
    redact_prompts: bool = False


class AuditLog:
    """Appends JSON lines to `path`, rotating and pruning per `policy`; a None path disables it."""

    def __init__(self, path: Path | None, policy: AuditPolicy = AuditPolicy()) -> None:
        self.path = Path(path) if path else None
        self.policy = policy
        self._lock = threading.Lock()
        self._started = time.time()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._started = _first_entry_time(self.path) or self._started
            self._prune()

    def write(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self.policy.redact_prompts and "params" in entry:
            entry = {**entry, "params": redact_prompts(entry["params"])}
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        try:
            with self._lock:
                if self._due_for_rotation(len(line.encode())):
                    self._rotate()
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line)
        except OSError as exc:
            log.error("audit log %s not writable: %s", self.path, exc)

    def rotated_files(self) -> list[Path]:
        """audit.jsonl.1, .2, ... (newest first) that exist now."""
        assert self.path is not None
        found = [self.path.with_name(f"{self.path.name}.{n}") for n in range(1, self.policy.keep_files + 2)]
        return [path for path in found if path.exists()]

    def _due_for_rotation(self, incoming: int) -> bool:
        assert self.path is not None
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            self._started = time.time()
            return False
        too_big = self.policy.max_bytes > 0 and size + incoming > self.policy.max_bytes
        too_old = self.policy.rotate_seconds > 0 and time.time() - self._started > self.policy.rotate_seconds
        return size > 0 and (too_big or too_old)

    def _rotate(self) -> None:
        """audit.jsonl -> .1, .1 -> .2, ...; the oldest beyond keep_files is deleted."""
        assert self.path is not None
        keep = self.policy.keep_files
        for n in range(keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                if n == keep:
                    older.unlink()
                else:
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if keep > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._started = time.time()
        self._prune()

    def _prune(self) -> None:
        """Delete rotated files past the retention age (the live file rotates by age instead)."""
        assert self.path is not None
        cutoff = time.time() - self.policy.retention_days * 86400.0
        for path in self.path.parent.glob(f"{self.path.name}.*"):
            suffix = path.name[len(self.path.name) + 1:]
            if suffix.isdigit() and (int(suffix) > self.policy.keep_files or path.stat().st_mtime < cutoff):
                path.unlink(missing_ok=True)


def _first_entry_time(path: Path) -> float | None:
    """When the live file was started: the time of its first entry (None if empty or unreadable)."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
        return datetime.fromisoformat(json.loads(first)["time"]).timestamp() if first else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def redact_prompts(params: Any) -> Any:
    """Parameters with every prompt text (and script arguments, which carry prompt lists)
    replaced by its length: what was asked stays private, that it was asked does not."""
    if isinstance(params, dict):
        return {key: _redacted(value) if _is_prompt_field(key) else redact_prompts(value)
                for key, value in params.items()}
    if isinstance(params, list):
        return [redact_prompts(item) for item in params]
    return params


def _is_prompt_field(key: Any) -> bool:
    return isinstance(key, str) and ("prompt" in key.lower() or key in PROMPT_FIELDS)


def _redacted(value: Any) -> str:
    return f"<redacted {len(json.dumps(value, default=str))} chars>" if value else value


def request_entry(caller: str, method: str, route: str, status: int, duration: float) -> dict[str, Any]:
    """The audit line of a submission of work that wrote no generation entry (e.g. ControlNet
    detect, extras, or a request refused before it ran)."""
    return {
        "time": datetime.now(timezone.utc).isoformat(),
        "caller": caller,
        "route": route,
        "method": method,
        "status": "ok" if status < 400 else "error",
        "http_status": status,
        "timings": {"total": round(duration, 4)},
    }


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

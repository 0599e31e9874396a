"""POST a finished task to its `callback_url`, the way the agent-scheduler extension does.

The body is `multipart/form-data` with the fields `task_id` and `status` and one `files` part
per image; each try has a 5 s timeout and failures are retried a few times with a growing
pause. A callback that never succeeds is logged: the task itself stays done (or failed), and
its results stay available from the results route. Standard library only.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0
RETRY_PAUSES = (1.0, 2.0, 4.0)  # pauses before the 2nd, 3rd and 4th try


@dataclass(frozen=True)
class CallbackFile:
    name: str
    content: bytes
    mime: str


def check_callback_url(url: str) -> None:
    """Refuse at queue time what could never be called (the caller turns this into a 400)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"callback_url must be an http:// or https:// URL, got {url!r}")


def multipart_body(fields: dict[str, str], files: list[CallbackFile]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = f"webui-api-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for item in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{item.name}"\r\n'
            f"Content-Type: {item.mime}\r\n\r\n"
        )
        chunks.append(head.encode() + item.content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def post_callback(url: str, task_id: str, status: str, files: list[CallbackFile], pauses=RETRY_PAUSES) -> bool:
    """Deliver once, retrying on network errors and non-2xx answers; True when delivered."""
    body, content_type = multipart_body({"task_id": task_id, "status": status}, files)
    for attempt, pause in enumerate((0.0, *pauses)):
        time.sleep(pause)
        request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS):
                return True
        except (urllib.error.URLError, OSError) as exc:  # HTTPError (non-2xx) is a URLError too
            log.warning("callback for task %s to %s failed (try %d): %s", task_id, url, attempt + 1, exc)
    log.error("callback for task %s to %s was never delivered; results stay available", task_id, url)
    return False

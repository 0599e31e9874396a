"""POST a finished task to its `callback_url`, the way the agent-scheduler extension does,
without letting a client aim the server at its own network (see url_policy.py).

Callbacks are off unless the operator allows them with --callback-allow (hosts, CIDRs or
"public"), except for API-key callers, who may reach public addresses. The URL is checked when
the task is queued (a 400 if refused) and again before every try; the connection goes to the
checked address, redirects are not followed, each try has a 5 s timeout, and logs show the URL
without its query string or credentials.

The body is `multipart/form-data` with the fields `task_id` and `status` and one `files` part
per image; failures are retried a few times with a growing pause. A callback that never
succeeds is logged: the task itself stays done (or failed), and its results stay available
from the results route. Standard library only.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import BadRequest
from .url_policy import RefusedUrl, Resolver, Target, UrlPolicy, check_url, redacted, system_resolver

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0
RETRY_PAUSES = (1.0, 2.0, 4.0)  # pauses before the 2nd, 3rd and 4th try
KEY_CALLER_POLICY = UrlPolicy(public=True)  # what an API-key caller may reach without --callback-allow


@dataclass(frozen=True)
class CallbackFile:
    name: str
    content: bytes
    mime: str


def callback_policy(allowed: Sequence[str], caller_identity: str | None) -> UrlPolicy | None:
    """The policy a caller's callback URLs follow: --callback-allow when set, public addresses
    for API-key callers, else None (callbacks off)."""
    policy = UrlPolicy.parse(allowed)
    if policy.configured:
        return policy
    if caller_identity is not None and caller_identity.startswith("key:"):
        return KEY_CALLER_POLICY
    return None


def check_callback_url(url: str, allowed: Sequence[str], caller_identity: str | None,
                       resolve: Resolver = system_resolver) -> Target:
    """Refuse at queue time what may not be called (BadRequest, 400)."""
    policy = callback_policy(allowed, caller_identity)
    if policy is None:
        raise BadRequest("callback_url is not allowed on this server (the operator enables callbacks with "
                         "--callback-allow, or gives the client an API key)", errors="callback_url: callbacks are off")
    try:
        return check_url(url, policy, resolve)
    except RefusedUrl as exc:
        raise BadRequest(f"callback_url {exc}", errors="callback_url refused") from exc


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


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address; the Host header keeps the URL's host name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, verifying the certificate for the URL's host name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def send_once(target: Target, body: bytes, content_type: str, timeout: float = TIMEOUT_SECONDS) -> int:
    """One POST to the checked target; its HTTP status (redirects are answers, not followed)."""
    connection_type = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = connection_type(target, timeout)
    try:
        connection.request("POST", target.path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        response.read(64 * 1024)
        return response.status
    finally:
        connection.close()


def post_callback(url: str, task_id: str, status: str, files: list[CallbackFile], policy: UrlPolicy,
                  pauses: Sequence[float] = RETRY_PAUSES, resolve: Resolver = system_resolver) -> bool:
    """Deliver once, retrying on network errors and non-2xx answers; True when delivered.
    The URL is checked again before each try; a refusal or a redirect ends the attempts."""
    body, content_type = multipart_body({"task_id": task_id, "status": status}, files)
    shown = redacted(url)
    for attempt, pause in enumerate((0.0, *pauses)):
        time.sleep(pause)
        try:
            answer = send_once(check_url(url, policy, resolve), body, content_type)
        except RefusedUrl as exc:
            log.error("callback for task %s to %s refused: %s", task_id, shown, exc)
            return False
        except (OSError, http.client.HTTPException) as exc:
            log.warning("callback for task %s to %s failed (try %d): %s", task_id, shown, attempt + 1, exc)
            continue
        if 200 <= answer < 300:
            return True
        if 300 <= answer < 400:
            log.error("callback for task %s to %s answered a redirect (%d); redirects are not followed",
                      task_id, shown, answer)
            return False
        log.warning("callback for task %s to %s answered HTTP %d (try %d)", task_id, shown, answer, attempt + 1)
    log.error("callback for task %s to %s was never delivered; results stay available", task_id, shown)
    return False

"""Domain exceptions and their single mapping to A1111's error JSON.

Anywhere in the code raises an `ApiError` subclass; one handler in `app.py` turns it into
A1111's body `{"error", "detail", "body", "errors"}` with the status the class declares.
Where A1111 answers bad input with a 500, we answer with a 4xx and keep A1111's wording.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ApiError(Exception):
    """Base of every error the API reports on purpose."""

    status_code: int = 500
    error_name: str = "HTTPException"  # A1111's "error" field (an exception class name)

    def __init__(self, detail: str, *, errors: str = "", body: Any = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.body = body

    def to_body(self) -> dict[str, Any]:
        return {"error": self.error_name, "detail": self.detail, "body": self.body, "errors": self.errors}


class BadRequest(ApiError):
    """Input that passed the schema but makes no sense (400)."""

    status_code = 400


class NotFound(ApiError):
    """A named thing (checkpoint, image, script) does not exist (404)."""

    status_code = 404


class ValidationFailed(ApiError):
    """A semantic validation failure A1111 reports as 422 (scripts, sampler names)."""

    status_code = 422


class InvalidImage(BadRequest):
    """Base64 or bytes that do not decode to an image (A1111: "Invalid encoded image")."""

    def __init__(self, detail: str = "Invalid encoded image", **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)


class InvalidImageFormat(BadRequest):
    """An output format other than png/jpg/jpeg/webp (A1111: "Invalid image format")."""

    def __init__(self, fmt: str) -> None:
        super().__init__("Invalid image format", errors=f"samples_format {fmt!r} is not one of png, jpg, jpeg, webp")


class UnknownOption(BadRequest):
    """POST /options with a key the server does not know (A1111: KeyError, 500)."""

    error_name = "KeyError"


class UnknownCheckpoint(NotFound):
    """A checkpoint title/name/hash that matches nothing (A1111: RuntimeError "model 'X' not found")."""

    error_name = "RuntimeError"

    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} not found", errors=f"model {name!r} not found")


class ServiceUnavailable(ApiError):
    """The server is shutting down or the queue refuses work (503)."""

    status_code = 503


class Unauthorized(ApiError):
    """HTTP Basic auth failed (401, without a WWW-Authenticate header, like A1111)."""

    status_code = 401


class GenerationFailed(ApiError):
    """The engine failed on a job for a reason that is not the client's fault (500)."""

    status_code = 500
    error_name = "RuntimeError"


class LimitExceeded(ApiError):
    """A request beyond a configured limit (422; 413 for sizes of the body or of images).

    The message names the limit, the flag that sets it and the value received."""

    status_code = 422
    error_name = "LimitExceeded"

    def __init__(self, what: str, value: Any, limit: Any, flag: str, status: int = 422) -> None:
        super().__init__(f"{what} is {value}, more than the limit of {limit} ({flag})", errors=f"{flag} {limit}")
        self.status_code = status


class NotImplementedFeature(ApiError):
    """A valid A1111 request for a feature this server does not have yet (501)."""

    status_code = 501
    error_name = "NotImplementedError"


class DeviceOutOfMemory(ServiceUnavailable):
    """The device ran out of memory during this job (torch.OutOfMemoryError): 503 + Retry-After.

    A1111 answers 500 with error "OutOfMemoryError"; we keep that error name but say 503 because
    the server recovered (the job's memory was released) and the same request may succeed once
    fewer jobs share the device, or at a smaller size or batch.
    """

    error_name = "OutOfMemoryError"

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(
            "The GPU ran out of memory while running this job; its memory was released. Retry later, "
            f"or ask for fewer or smaller images. ({detail})",
            errors=detail,
        )
        self.headers = {"Retry-After": str(retry_after)}


MAX_ECHOED_INPUT = 200  # characters of a refused input echoed back in a 422 (bodies can be megabytes)


def validation_error_body(errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """FastAPI's 422 body `{"detail": [...]}` made of JSON values only.

    Pydantic's error dicts carry the refused input (bytes, when a JSON route is called with
    text/plain, multipart or no content type) and exception objects in `ctx`; both are turned
    into short text so the error body itself always serialises."""
    return {"detail": [_jsonable_error(error) for error in errors]}


def _jsonable_error(error: dict[str, Any]) -> dict[str, Any]:
    clean = dict(error)
    if "ctx" in clean:
        clean["ctx"] = {key: str(value) for key, value in clean["ctx"].items()}
    if "input" in clean:
        clean["input"] = _jsonable_input(clean["input"])
    return clean


def _jsonable_input(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[:MAX_ECHOED_INPUT]).decode("utf-8", errors="replace")
        return text + ("..." if len(value) > MAX_ECHOED_INPUT else "")
    if isinstance(value, str):
        return value[:MAX_ECHOED_INPUT] + ("..." if len(value) > MAX_ECHOED_INPUT else "")
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    return _short_repr(value)


def _short_repr(value: Any) -> str:
    """Containers and other objects: a bounded text form (deep or huge inputs must not be echoed whole)."""
    if isinstance(value, (dict, list, tuple)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text[:MAX_ECHOED_INPUT]

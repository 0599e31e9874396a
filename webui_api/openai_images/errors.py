"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, for the /v1/images and
/v1/models routes: OpenAI clients read `error.message` and raise by status, so the A1111 body
the rest of the server answers with would reach their users as an unreadable dict."""

from __future__ import annotations

from typing import Any

from ..errors import ApiError, BadRequest, UnknownCheckpoint

# status -> (OpenAI's error type, its code) where OpenAI has a fixed pair for that status
_TYPE_AND_CODE: dict[int, tuple[str, str | None]] = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
}


class OpenAIParamError(BadRequest):
    """A request parameter OpenAI's API would refuse (400), naming the parameter in `param`."""

    def __init__(self, message: str, param: str | None, code: str | None = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The body for `status`; 5xx are `server_error`, other 4xx `invalid_request_error`."""
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    error_type, default_code = _TYPE_AND_CODE.get(status, (default_type, None))
    return {"error": {"message": message, "type": error_type, "param": param, "code": code or default_code}}


def openai_status(status: int) -> int:
    """OpenAI answers every refused parameter with 400; it has no 422 (our guards' status)."""
    return 400 if status == 422 else status


def api_error_body(exc: ApiError, status: int | None = None) -> dict[str, Any]:
    """An ApiError raised anywhere below (auth, guards, queue, engine) in OpenAI's shape, for
    the `status` it is answered with (the error's own by default)."""
    status = status or exc.status_code
    if isinstance(exc, OpenAIParamError):
        return error_body(status, exc.detail, exc.param, exc.code)
    if isinstance(exc, UnknownCheckpoint):
        name = exc.detail.removeprefix("model ").removesuffix(" not found")
        return error_body(404, f"The model {name} does not exist", "model", "model_not_found")
    message = exc.detail
    if exc.errors and str(exc.errors) not in message:
        message = f"{message}: {exc.errors}"
    return error_body(status, message)


def validation_error_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """FastAPI's field errors as one OpenAI 400: the first error names the parameter."""
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "form")]
    param = ".".join(location) or None
    messages = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg', '')}"
                         for e in errors)
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return error_body(400, messages or "Invalid request", param, code)

"""The error body every non-validation refusal has (A1111's api_middleware shape)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class A1111Error(BaseModel):
    """`{"error", "detail", "body", "errors"}`: the exception's class name, the message, the
    request body when A1111 echoes it (usually ""), and the exception's text."""

    error: str = Field(description="error class name, e.g. HTTPException, LimitExceeded, RuntimeError")
    detail: Any = Field(description="what went wrong, for people")
    body: Any = Field(description='the offending body where it is echoed; usually ""')
    errors: Any = Field(description="the exception's text, or the limit and flag that refused the request")


# Set in a route's openapi_extra when the route documents its refusals in a body of its own (the
# OpenAI-compatible routes answer OpenAI's error shape): /openapi.json leaves them as declared.
OWN_ERROR_SHAPE = "x-own-error-shape"

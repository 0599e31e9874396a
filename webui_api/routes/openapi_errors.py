"""The OpenAPI document lists the refusals every route can really answer, with their bodies.

FastAPI documents only 200 and its own 422. The refusals of this server come from layers
every route shares (the auth gate and rate limiter, the body-size middleware, the request
guards, the lifecycle's drain, the error mapping), so they are added to every operation in
one place instead of being repeated on each route: 400/404 (bad or unknown input), 413
(body or image over a limit, operations with a body), 429 (rate limit), 503 (queue full or
shutting down) with A1111's error body, and 422 as either FastAPI's validation body or A1111's
body (LimitExceeded, unknown sampler or script).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..schemas.errors import OWN_ERROR_SHAPE, A1111Error

ERROR_REF = "#/components/schemas/A1111Error"
REFUSALS = {
    "400": "Bad input the schema cannot express (A1111's error body)",
    "401": "Missing or wrong credentials when --api-auth or API keys are configured",
    "403": "The API key's route groups do not include this route",
    "404": "A named thing (checkpoint, image, script, task file) does not exist",
    "429": "Rate limit of the caller's key exceeded (Retry-After says when to come back)",
    "503": "The queue is full (Retry-After) or the server is shutting down",
}
BODY_TOO_LARGE = "The request body, or an image in it, is over a configured limit (--max-body-mb, --max-input-pixels)"
VALIDATION = "FastAPI's validation body, or A1111's body for a refused limit, sampler, scheduler or script"
# 200 answers that are not (only) JSON: the routes return Response objects FastAPI cannot describe.
OTHER_MEDIA_TYPES = {
    ("/metrics", "get"): ("text/plain",),
    ("/agent-scheduler/v1/task/{task_id}/events", "get"): ("text/event-stream", "application/json"),
    ("/agent-scheduler/v1/task/{task_id}/results", "get"): ("application/zip", "application/json"),
    ("/agent-scheduler/v1/results/{task_id}", "get"): ("application/zip", "application/json"),
    ("/v1/controlnet", "post"): ("application/json", "image/png"),
}


def install_error_responses(app: FastAPI) -> None:
    """Replace app.openapi with a builder that adds the shared refusals to every operation."""
    app.openapi = _builder(app)  # type: ignore[method-assign]


def _builder(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                                   description=app.description, routes=app.routes, servers=app.servers)
            add_error_responses(document)
            app.openapi_schema = document
        return app.openapi_schema

    return openapi


def add_error_responses(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["A1111Error"] = A1111Error.model_json_schema()
    for path, path_item in document.get("paths", {}).items():
        for method, operation in path_item.items():
            if isinstance(operation, dict) and operation.get(OWN_ERROR_SHAPE):
                operation["responses"].pop("422", None)  # they answer bad input with their own 400
                continue
            if isinstance(operation, dict) and "responses" in operation:
                _add_to(operation)
                _describe_media_types(operation, OTHER_MEDIA_TYPES.get((path, method), ()))


def _describe_media_types(operation: dict[str, Any], media_types: tuple[str, ...]) -> None:
    if not media_types:
        return
    success = operation["responses"].setdefault("200", {"description": "Successful Response"})
    success["content"] = {media_type: {"schema": {}} for media_type in media_types}


def _add_to(operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    error_body = {"application/json": {"schema": {"$ref": ERROR_REF}}}
    for status, description in REFUSALS.items():
        responses.setdefault(status, {"description": description, "content": error_body})
    if "requestBody" in operation:
        responses.setdefault("413", {"description": BODY_TOO_LARGE, "content": error_body})
    validation = responses.get("422")
    if validation is not None:
        schema = validation.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None and schema.get("$ref") != ERROR_REF:
            validation["content"]["application/json"]["schema"] = {"anyOf": [schema, {"$ref": ERROR_REF}]}
            validation["description"] = VALIDATION
    else:
        responses["422"] = {"description": VALIDATION, "content": error_body}

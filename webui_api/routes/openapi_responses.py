"""Response schemas in the OpenAPI document for routes that answer plain dicts.

Many routes build A1111's bodies as dicts (the exact key order and typing matter, and a
response model would re-serialise them), so FastAPI can only describe them as "an object".
This module documents their shapes — A1111's model names where A1111 has one — without
touching what the routes send: `install(app)` adds the schemas to the generated document.
`tests/api/test_docs_offline.py` fails when a JSON route is left without one.
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI
from pydantic import BaseModel, Field, create_model

from ..option_defaults import OPTION_DEFS
from ..schemas.generation import GenerationResponse


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class SdapiProgressResponse(BaseModel):
    """GET /sdapi/v1/progress (global: the job on the device)."""

    progress: float = Field(title="Progress", description="The progress with a range of 0 to 1")
    eta_relative: float = Field(title="ETA in secs")
    state: ProgressState
    current_image: str | None = Field(default=None, description="base64 PNG preview (show_progress_every_n_steps)")
    textinfo: str | None = None


class PNGInfoRequest(BaseModel):
    image: str = Field(description="The base64 encoded PNG image (a data: URL prefix is accepted)")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="A string with the parameters used to generate the image")
    items: dict[str, Any] = Field(description="A dictionary containing all the other fields the image had")
    parameters: dict[str, Any] = Field(description="A dictionary with parsed generation info fields")


class InterrogateResponse(BaseModel):
    caption: str | None = Field(default=None, description="The generated caption for the image.")


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="{free, used, total} in bytes, or {error}")
    cuda: dict[str, Any] = Field(description="{system, active, allocated, reserved, inactive, events}, or {error}")


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = Field(default=None, description="base64 image")


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class QueuedTask(BaseModel):
    task_id: str


class TaskModel(BaseModel):
    """agent-scheduler's task fields."""

    id: str
    api_task_id: str | None = None
    api_task_callback: str | None = None
    name: str | None = None
    type: str
    status: str = Field(description="pending, running, done, failed or interrupted")
    params: dict[str, Any]
    priority: int
    position: int | None = None
    result: str | None = Field(default=None, description="the error text of a failed task")
    bookmarked: bool = False
    created_at: str
    updated_at: str


class TaskAnswer(BaseModel):
    """agent-scheduler's envelope: `success` false with a `message` for an unknown task (HTTP 200)."""

    success: bool
    data: Any | None = None
    message: str | None = None


class TaskResult(BaseModel):
    image: str = Field(description="data: URL of the image")
    infotext: str


class TaskResults(BaseModel):
    """agent-scheduler's results answer (`?zip=true`: a zip file instead)."""

    success: bool
    data: list[TaskResult] | None = None
    message: str | None = None


class QueueStatus(BaseModel):
    current_task_id: str | None = None
    pending_tasks: list[TaskModel]
    total_pending_tasks: int
    paused: bool


class ControlNetVersion(BaseModel):
    version: int


class ControlNetModelList(BaseModel):
    model_list: list[str]


class ControlNetSettings(BaseModel):
    control_net_unit_count: int


class ControlNetControlTypes(BaseModel):
    control_types: dict[str, Any] = Field(description="per tag: module_list, model_list, default_option, default_model")


class ControlNetModuleList(BaseModel):
    module_list: list[str]
    module_detail: dict[str, Any] = Field(description="per module: model_free, sliders")


class ControlNetDetectResponse(BaseModel):
    info: str
    images: list[str] = Field(description="base64 PNG maps")
    poses: list[dict[str, Any]] | None = Field(default=None, description="openpose modules only")


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    model_loaded: bool
    worker_alive: bool
    shutting_down: bool


class Empty(BaseModel):
    """An empty JSON object, as A1111 answers."""


def options_model() -> type[BaseModel]:
    """A1111's OptionsModel: one optional field per option, its default as the example."""
    fields: dict[str, Any] = {}
    for option in OPTION_DEFS:
        nullable: Any = Optional[_json_type(option.default)]  # noqa: UP045 (a type built at run time)
        fields[option.key] = (nullable, Field(default=None, examples=[_example(option.default)]))
    return create_model("OptionsModel", **fields)


def _json_type(default: Any) -> Any:
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return float  # A1111's typemap {int: float}
    if isinstance(default, str):
        return str
    if isinstance(default, (list, tuple)):
        return list[Any]
    return Any


def _example(default: Any) -> Any:
    return list(default) if isinstance(default, tuple) else default


_NULL = {"description": "null (A1111 answers nothing)", "schema": {"type": "null"}}

# (method, path) -> the 200 body's model, or a ready "content" entry for bodies that are not a model
JSON_RESPONSES: dict[tuple[str, str], Any] = {
    ("post", "/sdapi/v1/png-info"): PNGInfoResponse,
    ("get", "/sdapi/v1/progress"): SdapiProgressResponse,
    ("post", "/sdapi/v1/interrupt"): Empty,
    ("post", "/sdapi/v1/skip"): _NULL,
    ("get", "/sdapi/v1/options"): "options",
    ("post", "/sdapi/v1/options"): _NULL,
    ("get", "/sdapi/v1/cmd-flags"): "flags",
    ("get", "/sdapi/v1/embeddings"): EmbeddingsResponse,
    ("get", "/sdapi/v1/scripts"): ScriptsList,
    ("get", "/sdapi/v1/memory"): MemoryResponse,
    ("post", "/sdapi/v1/refresh-checkpoints"): _NULL,
    ("post", "/sdapi/v1/refresh-vae"): _NULL,
    ("post", "/sdapi/v1/refresh-loras"): _NULL,
    ("post", "/sdapi/v1/refresh-embeddings"): _NULL,
    ("post", "/sdapi/v1/interrogate"): InterrogateResponse,
    ("post", "/sdapi/v1/extra-single-image"): ExtrasSingleImageResponse,
    ("post", "/sdapi/v1/extra-batch-images"): ExtrasBatchImagesResponse,
    ("post", "/sdapi/v1/unload-checkpoint"): Empty,
    ("post", "/sdapi/v1/reload-checkpoint"): Empty,
    ("post", "/agent-scheduler/v1/queue/txt2img"): QueuedTask,
    ("post", "/agent-scheduler/v1/queue/img2img"): QueuedTask,
    ("get", "/agent-scheduler/v1/queue"): QueueStatus,
    ("get", "/agent-scheduler/v1/task/{task_id}"): TaskAnswer,
    ("delete", "/agent-scheduler/v1/task/{task_id}"): TaskAnswer,
    ("post", "/agent-scheduler/v1/delete/{task_id}"): TaskAnswer,
    ("get", "/agent-scheduler/v1/task/{task_id}/position"): TaskAnswer,
    ("get", "/controlnet/version"): ControlNetVersion,
    ("get", "/controlnet/model_list"): ControlNetModelList,
    ("get", "/controlnet/settings"): ControlNetSettings,
    ("get", "/controlnet/control_types"): ControlNetControlTypes,
    ("get", "/controlnet/module_list"): ControlNetModuleList,
    ("post", "/controlnet/detect"): ControlNetDetectResponse,
    ("get", "/health"): HealthResponse,
    ("get", "/ready"): ReadyResponse,
}

# (method, path) -> the model of the JSON answer of routes that may also answer another media type
# (the other media types, documented by openapi_errors, are kept)
MIXED_RESPONSES: dict[tuple[str, str], Any] = {
    ("get", "/agent-scheduler/v1/task/{task_id}/events"): TaskAnswer,  # JSON: an unknown task
    ("get", "/agent-scheduler/v1/task/{task_id}/results"): TaskResults,
    ("get", "/agent-scheduler/v1/results/{task_id}"): TaskResults,
    ("post", "/v1/controlnet"): GenerationResponse,  # JSON unless Accept: image/png
}

# (method, path) -> the request body's model, for routes that read a plain dict
REQUEST_BODIES: dict[tuple[str, str], Any] = {
    ("post", "/sdapi/v1/png-info"): PNGInfoRequest,
    ("post", "/sdapi/v1/options"): "options",
}

# (method, path) -> media type and description of bodies that are not JSON
OTHER_RESPONSES: dict[tuple[str, str], tuple[str, str]] = {
    ("get", "/metrics"): ("text/plain", "Prometheus text exposition format"),
    ("get", "/sdapi/v1/progress/{task_id}/events"): (
        "text/event-stream", "status, progress and done events of one job (docs/api-compat.md)"),
    ("get", "/sdapi/v1/outputs/{name}"): ("image/*", "the stored PNG, JPEG or WEBP image"),
    ("post", "/sdapi/v1/server-stop"): ("text/plain", 'the text "Stopping."'),
}

# (method, path) -> what happens instead of a body (the route never answers 200 with one)
NO_BODY: dict[tuple[str, str], str] = {
    ("post", "/sdapi/v1/server-kill"): "no answer: the process exits and the connection drops (as A1111)",
    ("post", "/sdapi/v1/server-restart"): "501 with an empty body: no supervisor to restart the server",
}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` return FastAPI's document with the schemas above filled in."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        _fill(schema, app)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _fill(schema: dict[str, Any], app: FastAPI) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for (method, path), spec in JSON_RESPONSES.items():
        response = _ok_response(schema, method, path)
        if response is not None:
            response["content"] = {"application/json": {"schema": _schema_of(spec, components, app)}}
            if isinstance(spec, dict):
                response["description"] = spec["description"]
    for (method, path), (media_type, description) in OTHER_RESPONSES.items():
        response = _ok_response(schema, method, path)
        if response is not None:
            response["content"] = {media_type: {"schema": {"type": "string", "format": "binary"}}}
            response["description"] = description
    for (method, path), spec in MIXED_RESPONSES.items():
        response = _ok_response(schema, method, path)
        if response is not None:
            content = response.setdefault("content", {})
            content["application/json"] = {"schema": _schema_of(spec, components, app)}
    for (method, path), spec in REQUEST_BODIES.items():
        operation = schema.get("paths", {}).get(path, {}).get(method)
        if operation is not None:
            body = operation.setdefault("requestBody", {"required": True})
            body["content"] = {"application/json": {"schema": _schema_of(spec, components, app)}}
    for (method, path), description in NO_BODY.items():
        response = _ok_response(schema, method, path)
        if response is not None:
            response.pop("content", None)
            response["description"] = description


def _ok_response(schema: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    """The 200 response entry of a route, or None when the route is not served (e.g. flags off)."""
    operation = schema.get("paths", {}).get(path, {}).get(method)
    return None if operation is None else operation.setdefault("responses", {}).setdefault("200", {})


def _schema_of(spec: Any, components: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    if isinstance(spec, dict):
        return spec["schema"]
    if spec == "flags":
        flags = dict(app.state.settings.cmd_flags)
        properties = {key: {"title": key, "example": value} for key, value in flags.items()}
        components["FlagsModel"] = {"title": "FlagsModel", "type": "object", "properties": properties}
        return {"$ref": "#/components/schemas/FlagsModel"}
    model = options_model() if spec == "options" else spec
    return _component(model, components)


def _component(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """Register a model (and the models it uses) under components/schemas; a $ref to it."""
    generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in generated.pop("$defs", {}).items():
        components.setdefault(name, definition)
    name = model.__name__
    if name in components and components[name] != generated:
        name = f"{name}Body"  # FastAPI already has a different model of that name (e.g. a request model)
    components[name] = generated
    return {"$ref": f"#/components/schemas/{name}"}

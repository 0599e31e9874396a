"""create_app(settings, engine=None): the FastAPI application.

The lifespan builds the runtime (options store, engine, scheduler, progress), starts the
worker thread and loads the model on it; one exception handler maps every error to A1111's
body. Passing an `engine` lets tests and benchmarks share one already-built model.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError, StarletteHTTPException
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse

from . import __version__
from .auth import add_cors, build_gate, exposure_warnings, protect_docs, record_work, unclassified_routes
from .batching import BatchingConfig
from .errors import ApiError, validation_error_body
from .job_control import JobControl
from .lane_progress import LaneProgress
from .options import OptionsStore
from .output_urls import OUTPUTS_FOLDER, OutputStore
from .pixel_budget import pixel_budget
from .progress import ProgressTracker
from .runtime import Runtime
from .scheduler import Scheduler, WorkItem
from .serving.audit import AuditLog
from .serving.content_policy import ContentPolicy
from .serving.guards import BodySizeLimit, PixelBudgetScope
from .serving.hooks import ServingHooks
from .serving.lifecycle import Lifecycle
from .serving.metrics import Metrics
from .serving.result_cache import ResultCache
from .settings import Settings
from .workers import Worker

log = logging.getLogger(__name__)

EMBEDDED_MODEL_WARNING = (
    "No checkpoint found: serving the EMBEDDED TINY MODEL with random weights. Its images are noise.\n"
    "    To generate real images, put a Stable Diffusion checkpoint (.safetensors) in %s\n"
    "    (or pass --ckpt FILE / --ckpt-dir DIR) and select it with POST /sdapi/v1/options "
    '{"sd_model_checkpoint": "<title>"}.'
)


REPLICA_HEADER = "X-Webui-Api-Replica"


def create_app(
    settings: Settings, engine: Any | None = None, workers: Sequence[Worker] | None = None, replica: str | None = None,
    job_control: Callable[[Runtime], JobControl] | None = None,
) -> FastAPI:
    """`workers`: the scheduler's lanes (default: one local worker thread; --ray: RayWorkers).
    `replica`: this app's name among several ingress replicas (--ray), sent back on every answer
    as REPLICA_HEADER so an answer can be matched with that replica's log.
    `job_control`: builds what /progress, /interrupt and /skip act on (default: this process's
    jobs; several ingress replicas: the cluster's), closed when the app stops."""
    app = FastAPI(
        title="webui-api",
        version=__version__,
        lifespan=_lifespan_for(settings, engine, workers, job_control),
        root_path=f"/{settings.subpath.strip('/')}" if settings.subpath else "",
        docs_url=None, redoc_url=None,  # served by routes/docs.py with bundled assets (no CDN)
    )
    app.state.settings = settings
    app.state.gate = build_gate(settings)  # keys, Basic pairs, rate limiter: a bad keys file fails here
    app.state.output_store = OutputStore(settings.data_dir / OUTPUTS_FOLDER, settings.output_url_ttl)
    _install_error_handlers(app)
    _install_middleware(app, settings, replica)
    _include_routes(app, settings)
    protect_docs(app, settings)
    for path in unclassified_routes(app):
        log.error("route %s is not in the route group table (serving/groups.py): only admin keys may call it", path)
    return app


def _lifespan_for(
    settings: Settings, engine: Any | None, workers: Sequence[Worker] | None = None,
    job_control: Callable[[Runtime], JobControl] | None = None,
):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for warning in exposure_warnings(settings):
            log.warning(warning)
        runtime = build_runtime(settings, engine, workers)
        app.state.runtime = runtime
        if job_control is not None:
            runtime.control = job_control(runtime)
        runtime.scheduler.start()
        if settings.skip_load_model_at_start:
            runtime.serving.lifecycle.mark_loaded()  # models load on first use: ready at once
        else:
            runtime.scheduler.submit(WorkItem(run=lambda _: _load_startup_model(runtime), label="load model"))
        runner = _start_task_runner(app, runtime)
        try:
            yield
        finally:  # graceful: refuse new work, re-queue the running task in SQLite, stop the worker
            runtime.serving.lifecycle.begin_drain()
            await runner.stop()
            runtime.scheduler.stop()
            runtime.job_control().close()

    return lifespan


def _start_task_runner(app: FastAPI, runtime: Runtime):
    """Async tasks (agent-scheduler routes): persisted under <data dir>/tasks, resumed at start; in
    Redis when --ray and --redis-url are both given (one store for every ingress of the cluster)."""
    from .generation.task_runner import TaskRunner

    runner = TaskRunner(task_store(runtime.settings), runtime)
    app.state.task_runner = runner
    runtime.metrics.track_tasks_pending(lambda: runner.store.count("pending"))
    runner.start()
    return runner


def task_store(settings: Settings) -> Any:
    if settings.ray is not None and settings.redis_url:
        from .task_store_redis import RedisTaskStore

        return RedisTaskStore(settings.redis_url)
    from .tasks import TaskStore

    return TaskStore(settings.data_dir / "tasks")


def options_store(settings: Settings) -> OptionsStore:
    """This process's options; shared through Redis by the ingress replicas of a cluster, so an
    /options change on one replica reaches the jobs and GETs of every other."""
    if settings.ray is not None and settings.ray.shares_ingress_state and settings.redis_url:
        from .options_redis import RedisOptionsStore

        return RedisOptionsStore.for_cluster(settings, settings.ray.options_key)
    return OptionsStore.from_settings(settings)


def build_runtime(settings: Settings, engine: Any | None = None, workers: Sequence[Worker] | None = None) -> Runtime:
    from .postprocess.previews import preview_encoder

    if engine is None:
        from .engine.facade import Engine

        engine = Engine.from_settings(settings)
    options = options_store(settings)

    def tracker() -> ProgressTracker:  # a remote lane may have no preview to show yet
        encode = preview_encoder(lambda: options.get("live_previews_image_format"))
        return ProgressTracker(encode_preview=lambda image: None if image is None else encode(image))

    # several lanes run jobs at once: one tracker per lane, /progress shows the longest-running job
    progress: Any = tracker() if workers is None or len(workers) < 2 else LaneProgress(tracker)
    metrics = Metrics()
    from .serving.gpu_health import GpuHealth, NvmlSensor

    gpu_health = GpuHealth(NvmlSensor.open(), settings.gpu_max_temp)
    metrics.track_gpus(gpu_health.readings)
    scheduler = Scheduler(
        progress, after_failure=engine.free_memory,
        max_queue_depth=settings.max_queue_depth, queue_timeout=settings.queue_timeout,
        batching=BatchingConfig.for_server(settings.batch_max_size, settings.batch_wait_ms, settings.vram_mode),
        on_batch=metrics.observe_batch, workers=workers,
        client_error_for=getattr(engine, "client_error_for", None),
        admission_check=gpu_health.check_admission,
        lane_scope=lambda: pixel_budget(settings.guards.max_input_pixels),  # the worker decodes and sizes images too
    )
    metrics.track_queue_depth(lambda: scheduler.waiting_generations)
    serving = ServingHooks(
        limits=settings.guards, metrics=metrics, audit=AuditLog(settings.audit_log, settings.audit),
        lifecycle=Lifecycle(), policy=ContentPolicy.from_config(settings.content_policy),
        cache=ResultCache.from_settings(settings.data_dir, settings.result_cache_mb, settings.redis_url),
    )
    from .weights import WeightsFetcher

    return Runtime(settings=settings, options=options, engine=engine, scheduler=scheduler, progress=progress,
                   metrics=metrics, serving=serving, weights=WeightsFetcher.from_settings(settings),
                   gpu_health=gpu_health)


def _load_startup_model(runtime: Runtime) -> None:
    """Load the configured checkpoint (or the embedded one) and record its title in the options."""
    wanted = runtime.options.get("sd_model_checkpoint")
    title = None
    if wanted:
        try:
            title = runtime.engine.find_checkpoint(wanted).title
        except ApiError:
            log.warning("Configured checkpoint %r not found; loading the default instead", wanted)
    loaded = runtime.engine.load(title)
    runtime.options.set_internal(
        {"sd_model_checkpoint": loaded.info.title, "sd_checkpoint_hash": loaded.info.sha256 or ""}
    )
    runtime.serving.lifecycle.mark_loaded()
    if loaded.info.filename == "<embedded>":
        log.warning(EMBEDDED_MODEL_WARNING, runtime.settings.models_dir / "Stable-diffusion")


# errors ---------------------------------------------------------------------------------


def _error_response(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(status_code=status, content=body)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        _count_error(request, type(exc).__name__, exc.status_code)
        response = _error_response(exc.status_code, exc.to_body())
        response.headers.update(getattr(exc, "headers", None) or {})  # e.g. Retry-After on a full queue
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        _count_error(request, "HTTPException", exc.status_code)
        body = {"error": "HTTPException", "detail": exc.detail or "", "body": "", "errors": ""}
        return _error_response(exc.status_code, body)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        _count_error(request, "RequestValidationError", 422)
        return _error_response(422, validation_error_body(exc.errors()))



def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """An exception no handler claimed: 500 with A1111's body, like its api_middleware."""
    log.error("API error: %s %s\n%s", request.method, request.url.path, traceback.format_exc())
    _count_error(request, type(exc).__name__, 500)
    body = {"error": type(exc).__name__, "detail": "", "body": "", "errors": str(exc)}
    return _error_response(500, body)


def _count_error(request: Request, error_type: str, status: int) -> None:
    """errors by type in /metrics (before the lifespan built the runtime there is nothing to count in)."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.metrics.count_error(error_type, status)


# middleware -----------------------------------------------------------------------------


# Responses that are almost all base64 image data: gzip wins back only base64's 25 % at
# ~40 ms of CPU per megapixel image, a bad trade on the networks these servers live on.
# /v1/controlnet answers PNG bytes (already deflated) to Accept: image/png.
UNCOMPRESSED_PATHS = frozenset({"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/controlnet"})


class SelectiveGZipMiddleware:
    """A1111's GZip (minimum 1000 bytes) for every route except the image-generation ones."""

    def __init__(self, app: Any, minimum_size: int = 1000, skip_paths: frozenset[str] = UNCOMPRESSED_PATHS) -> None:
        self._plain = app
        self._gzip = GZipMiddleware(app, minimum_size=minimum_size)
        self._skip_paths = skip_paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in self._skip_paths:
            await self._plain(scope, receive, send)
        else:
            await self._gzip(scope, receive, send)


def _install_middleware(app: FastAPI, settings: Settings, replica: str | None = None) -> None:
    app.add_middleware(SelectiveGZipMiddleware)
    add_cors(app, settings)
    app.add_middleware(PixelBudgetScope, max_pixels=settings.guards.max_input_pixels)  # the one image budget
    app.add_middleware(BodySizeLimit, max_bytes=settings.guards.max_body_bytes)  # outermost: before any parsing

    @app.middleware("http")
    async def process_time(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # the last line of defence: A1111's body, the traceback in the log
            response = _unexpected_error(request, exc)
        duration = time.perf_counter() - started
        await record_work(request, response.status_code, duration)  # metrics by route group; audit of unrecorded work
        response.headers["X-Process-Time"] = f"{duration:.4f}"
        if replica is not None:
            response.headers[REPLICA_HEADER] = replica
        if settings.api_log and request.url.path.startswith("/sdapi"):
            _log_request(request, response.status_code, duration)
        return response


def _log_request(request: Request, status: int, duration: float) -> None:
    client = request.client.host if request.client else "-"
    version = request.scope.get("http_version", "1.1")
    log.info(
        "API %s %s %s/%s %s %s %s %.4f",
        datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f"), status, request.url.scheme, version,
        request.method, request.url.path, client, duration,
    )


# routes ---------------------------------------------------------------------------------


def _include_routes(app: FastAPI, settings: Settings) -> None:
    from .routes import (
        catalog,
        controlnet,
        controlnet_detect,
        docs,
        extras,
        generate,
        health,
        internal,
        interrogate,
        job_events,
        openapi_errors,
        openapi_responses,
        options,
        outputs,
        progress,
        system,
        tasks,
    )

    for module in (generate, progress, options, catalog, extras, interrogate, tasks, controlnet, controlnet_detect,
                   health, internal, job_events, outputs):
        app.include_router(module.router)
    app.include_router(job_events.websocket_router)
    docs.install(app)
    app.include_router(system.build_router(settings))
    _include_beyond_a1111(app)
    openapi_errors.install_error_responses(app)  # the shared 4xx/503 answers, with A1111's error body
    openapi_responses.install(app)  # after it: wraps that builder (which replaces, not wraps, the one before)


def _include_beyond_a1111(app: FastAPI) -> None:
    """Routes A1111 does not have: the OpenAI-compatible images API and the web playground."""
    from .routes import openai_images, playground

    app.include_router(openai_images.router)
    app.include_router(playground.router)

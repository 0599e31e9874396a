"""/health (liveness), /ready (readiness) and /metrics (Prometheus).

/health and /ready are open, for load balancers and orchestrators that carry no credentials:
they say nothing beyond up/down. /metrics sits behind the API auth like every other route
(route group `metrics`), because queue sizes and error counts are operational detail.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..runtime import Runtime
from . import api_router, get_runtime

router = APIRouter()
metrics_router = api_router()


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers HTTP. Restart it only when this fails."""
    return {"status": "ok"}


def readiness(request: Request) -> dict[str, Any]:
    """What /ready checks: the startup model is loaded, the device worker lives, no shutdown began."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return {"ready": False, "model_loaded": False, "worker_alive": False, "shutting_down": False}
    lifecycle = runtime.serving.lifecycle
    checks = {
        "model_loaded": lifecycle.model_loaded,
        "worker_alive": worker_alive(runtime.scheduler),
        "shutting_down": lifecycle.draining,
    }
    ready = checks["model_loaded"] and checks["worker_alive"] and not checks["shutting_down"]
    return {"ready": ready, **checks}


def worker_alive(scheduler: Any) -> bool:
    """Whether the device worker thread runs. The scheduler has no public accessor yet (its file
    is another change's), so this reads its thread attribute; a `worker_alive` property wins."""
    if hasattr(scheduler, "worker_alive"):
        return bool(scheduler.worker_alive)
    thread = getattr(scheduler, "_thread", None)
    return thread is not None and thread.is_alive()


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 when new work would be served now, else 503 (send traffic elsewhere)."""
    state = readiness(request)
    return JSONResponse(state, status_code=200 if state["ready"] else 503)


@metrics_router.get("/metrics")
async def metrics(runtime: Runtime = Depends(get_runtime)) -> Response:
    body, content_type = runtime.metrics.render()
    return Response(body, media_type=content_type)


router.include_router(metrics_router)

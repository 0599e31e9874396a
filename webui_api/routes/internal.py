"""A1111's task progress routes: POST /internal/progress and GET /internal/pending-tasks.

Same request and response fields as A1111's `modules/progress.py`, per job: any job in the
queue, on the device or finished is answered by its task id (`force_task_id`, A1111's
generated `task(...)` id, or an async task's id). Unlike A1111 these routes sit behind the
API's authentication when it is configured: a live preview is somebody's image.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel, Field

from ..auth import request_caller
from ..runtime import Runtime
from ..task_progress import (
    Viewer,
    internal_progress,
    observe,
    pending_tasks,
    queue_order,
    visible_pending,
)
from . import api_router, get_runtime

router = api_router()
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class ProgressRequest(BaseModel):
    id_task: str | None = Field(default=None, title="Task ID", description="id of the task to get progress for")
    id_live_preview: int = Field(default=-1, title="Live preview image ID",
                                 description="id of last received last preview image")
    live_preview: bool = Field(default=True, title="Include live preview",
                               description="boolean flag indicating whether to include the live preview image")


class ProgressResponse(BaseModel):
    active: bool = Field(title="Whether the task is being worked on right now")
    queued: bool = Field(title="Whether the task is in queue")
    completed: bool = Field(title="Whether the task has already finished")
    progress: float | None = Field(default=None, title="Progress", description="The progress with a range of 0 to 1")
    eta: float | None = Field(default=None, title="ETA in secs")
    live_preview: str | None = Field(default=None, title="Live preview image",
                                        description="Current live preview; a data: uri")
    id_live_preview: int | None = Field(
        default=None, title="Live preview image ID",
        description="Send this together with next request to prevent receiving same image")
    textinfo: str | None = Field(default=None, title="Info text", description="Info text used by WebUI.")


class PendingTasksResponse(BaseModel):
    size: int = Field(title="Pending task size")
    tasks: list[str] = Field(title="Pending task ids")


def pending_ids(request: Request, runtime: Runtime) -> list[str]:
    runner = getattr(request.app.state, "task_runner", None)
    return queue_order(runtime.scheduler, runner.store if runner is not None else None)


def viewer(request: Request) -> Viewer:
    return Viewer.of(request_caller(request))


@router.get("/internal/pending-tasks", response_model=PendingTasksResponse)
async def get_pending_tasks(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """The task ids waiting in the queue, the next one first (with authentication on: the caller's own)."""
    return pending_tasks(visible_pending(runtime.progress, pending_ids(request, runtime), viewer(request)))


@router.post("/internal/progress", response_model=ProgressResponse)
async def progress_api(body: ProgressRequest, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """One task's progress: queued ("In queue: i/n"), active (progress, eta, live preview) or completed."""
    view, pending = observe(runtime.progress, body.id_task or "", pending_ids(request, runtime), viewer(request))
    enabled = bool(runtime.options.get("live_previews_enable"))
    return internal_progress(view, pending, body.id_live_preview, body.live_preview, enabled)

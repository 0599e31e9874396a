"""GET /sdapi/v1/progress, POST /interrupt and /skip: answered while a generation runs."""

from __future__ import annotations

from typing import Any

from fastapi import Depends

from ..runtime import Runtime
from . import api_router, get_runtime

router = api_router()


@router.get("/sdapi/v1/progress")
async def progress(skip_current_image: bool = False, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    return runtime.job_control().progress(skip_current_image=skip_current_image)


@router.post("/sdapi/v1/interrupt")
async def interrupt(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Stop the running job; its request still answers 200 with the images made so far."""
    runtime.job_control().interrupt()
    return {}


@router.post("/sdapi/v1/skip")
async def skip(runtime: Runtime = Depends(get_runtime)) -> None:
    """End the current batch; the job goes on with the next one."""
    runtime.job_control().skip()
    return None

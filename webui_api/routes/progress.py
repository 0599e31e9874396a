"""GET /sdapi/v1/progress, POST /interrupt and /skip: answered while a generation runs."""

from __future__ import annotations

from typing import Any

from fastapi import Depends

from ..services import Services
from . import api_router, get_services

router = api_router()


@router.get("/sdapi/v1/progress")
async def progress(skip_current_image: bool = False, services: Services = Depends(get_services)) -> dict[str, Any]:
    return services.progress.snapshot(skip_current_image=skip_current_image)


@router.post("/sdapi/v1/interrupt")
async def interrupt(services: Services = Depends(get_services)) -> dict[str, Any]:
    """Stop the running job; its request still answers 200 with the images made so far."""
    services.scheduler.interrupt()
    return {}


@router.post("/sdapi/v1/skip")
async def skip(services: Services = Depends(get_services)) -> None:
    """End the current batch; the job goes on with the next one."""
    services.scheduler.skip()
    return None

"""POST /sdapi/v1/interrogate: A1111's image captioning ("clip") and tagging ("deepdanbooru").

The image is decoded off the worker; missing weight files are fetched first (A1111 downloads
them on first use; here before queueing, off the event loop, or a 400 when downloads are
off); the models run on the scheduler's worker (job "interrogate" in /progress), so they
never compete with a generation for the device and every other route keeps answering.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from ..errors import NotFound
from ..interrogate.service import Interrogator, check_model_name
from ..job_builder import job_timestamp
from ..postprocess.encode import decode_image_base64
from ..runtime import Runtime
from ..scheduler import ProgressSpec, WorkItem
from ..weights.runtime import NeededWeights, prefetch
from . import api_router, get_runtime

router = api_router()


class InterrogateRequest(BaseModel):
    """A1111's InterrogateRequest: unknown keys ignored; a null image is a 404 as in A1111."""

    model_config = ConfigDict(extra="ignore")

    image: str | None = ""
    model: str = "clip"


@router.post("/sdapi/v1/interrogate")
async def interrogate(request: InterrogateRequest, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    if request.image is None:
        raise NotFound("Image not found")
    image = await run_in_threadpool(lambda: decode_image_base64(request.image or "").convert("RGB"))
    model = check_model_name(request.model)
    interrogator = Interrogator.from_settings(runtime.settings, runtime.postprocess_models)
    await prefetch(runtime.weights, NeededWeights(required=interrogator.folders.missing(model)))
    interrogator.check_files(model)
    options = runtime.options.snapshot()
    item = WorkItem(run=lambda _cancel: interrogator.run(model, image, options), label="interrogate",
                    progress=ProgressSpec("interrogate", 1, job_timestamp(), 0))
    caption = await runtime.scheduler.run(item)
    return {"caption": caption}

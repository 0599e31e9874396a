"""GET /sdapi/v1/outputs/{name}: images of responses sent as URLs (webui_api.output_urls)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.responses import FileResponse

from ..errors import NotFound
from ..output_urls import OutputStore
from . import api_router

router = api_router()


def get_output_store(request: Request) -> OutputStore:
    return request.app.state.output_store


@router.get("/sdapi/v1/outputs/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
                       404: {"description": "unknown name or wrong signature"}, 410: {"description": "expired"}})
async def get_output(
    name: str,
    expires: Annotated[int, Query(description="unix time the URL expires (part of the signed URL)")],
    sig: Annotated[str, Query(description="the URL's signature")],
    store: Annotated[OutputStore, Depends(get_output_store)],
) -> FileResponse:
    """One stored output image; the URL must be exactly as the generation response gave it."""
    if not name or "/" in name or name.startswith("."):
        raise NotFound("Output not found")
    path, media_type = store.open(name, expires, sig)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

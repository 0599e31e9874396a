"""The web playground at `/` and its two assets. The page holds no data and needs no
credentials to load; every API call it makes carries the user's credentials."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ..errors import NotFound
from ..playground import ASSETS, CONTENT_SECURITY_POLICY, asset

router = APIRouter(include_in_schema=False)
_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache"}


@router.get("/")
async def page() -> Response:
    return Response(asset("index.html"), media_type=ASSETS["index.html"], headers=_HEADERS)


@router.get("/playground/{name}")
async def playground_asset(name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        raise NotFound(f"No playground file {name!r}")
    return Response(asset(name), media_type=ASSETS[name], headers=_HEADERS)

"""HTTP routes, one module per family. FastAPI stops here, in app.py and in auth.py."""

from fastapi import APIRouter, Depends, Request

from ..auth import require_api_auth
from ..services import Services


def api_router() -> APIRouter:
    """A router whose every route is behind --api-auth (when it is set)."""
    return APIRouter(dependencies=[Depends(require_api_auth)])


def get_services(request: Request) -> Services:
    return request.app.state.services

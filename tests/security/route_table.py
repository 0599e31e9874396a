"""The app's routes as (path template, methods, route object), on every FastAPI version: newer
releases keep included routers as lazy `_IncludedRouter` entries instead of copying routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def app_routes(app: Any) -> Iterator[tuple[str, frozenset[str], Any]]:
    from fastapi import routing

    if hasattr(routing, "iter_route_contexts"):
        for context in routing.iter_route_contexts(app.routes):
            route = context.original_route
            yield context.path, frozenset(getattr(context, "methods", None) or ()), route
        return
    for route in app.routes:
        yield route.path, frozenset(getattr(route, "methods", None) or ()), route

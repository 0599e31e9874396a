"""/docs (Swagger UI) and /redoc served with bundled assets: no request leaves the server.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on an offline host (this server
is offline by design) they stay blank. The scripts and styles come from the `fastapi-offline`
package's copies (MIT licensed), served under /docs-assets; Swagger UI's online spec validator
is switched off because it would call out. Like FastAPI's own pages these are plain routes
outside the API's auth dependency (--api-docs-auth puts the pages behind it; the assets are
the public library files).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

from ..errors import NotFound

ASSETS_PATH = "/docs-assets"
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def assets_folder() -> Path:
    """The static folder of the installed fastapi-offline package (found without importing it)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fastapi-offline package (bundled Swagger UI / ReDoc assets) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "static"


def install(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Add /docs, /redoc and /docs-assets/{name} to `app`, as FastAPI adds its own docs routes."""
    folder = assets_folder()
    title = app.title

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url, title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png", with_google_fonts=False,
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSET_TYPES:
            raise NotFound("No such docs asset")
        headers = {"Cache-Control": "public, max-age=86400"}
        return FileResponse(folder / name, media_type=ASSET_TYPES[name], headers=headers)

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
    app.add_route(ASSETS_PATH + "/{name}", asset, include_in_schema=False)

"""/docs and /redoc render from bundled assets (no external host), and the OpenAPI document
covers every route, /internal/* and the per-job streams included."""

from __future__ import annotations

import re

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)
ANY_URL = re.compile(r"https?://[^\s\"'<>)]+")


def test_docs_pages_reference_no_external_host(client):
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        html = response.text
        assert not EXTERNAL.search(html), page
        assert ANY_URL.findall(html) == [], page
        assets = re.findall(r"""(?:src|href)=["']?(/docs-assets/[^"' >]+)""", html)
        assert assets, page
        for asset in assets:
            fetched = client.get(asset)
            assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
    assert "validatorUrl" in client.get("/docs").text  # Swagger UI's online validator is switched off


def test_unknown_docs_asset_is_404(client):
    assert client.get("/docs-assets/../../etc/passwd").status_code == 404
    assert client.get("/docs-assets/other.js").status_code == 404


def test_openapi_lists_every_route(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for route in ("/internal/progress", "/internal/pending-tasks", "/sdapi/v1/progress/{task_id}/events",
                  "/sdapi/v1/outputs/{name}", "/sdapi/v1/txt2img", "/sdapi/v1/progress"):
        assert route in paths, route
    progress = paths["/internal/progress"]["post"]
    assert progress["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ProgressRequest")
    response = progress["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert response.endswith("/ProgressResponse")
    fields = schema["components"]["schemas"]["ProgressResponse"]["properties"]
    assert set(fields) == {"active", "queued", "completed", "progress", "eta", "live_preview", "id_live_preview",
                           "textinfo"}
    app_routes = {route.path for route in client.app.routes if getattr(route, "include_in_schema", False)}
    missing = {path for path in app_routes if path not in paths}
    assert missing == set()

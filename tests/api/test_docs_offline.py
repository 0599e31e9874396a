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


NOT_JSON = {("get", "/metrics"), ("get", "/sdapi/v1/progress/{task_id}/events"), ("get", "/sdapi/v1/outputs/{name}"),
            ("post", "/sdapi/v1/server-stop")}
NO_BODY = {("post", "/sdapi/v1/server-kill"), ("post", "/sdapi/v1/server-restart")}


def test_every_json_route_documents_its_answer(make_client):
    """No route is described as a bare "object": each names its fields (or says null)."""
    schema = make_client(api_server_stop=True).get("/openapi.json").json()
    components = schema["components"]["schemas"]
    vague = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            content = operation["responses"].get("200", {}).get("content", {})
            if (method, path) in NO_BODY:
                assert content == {}, (method, path)
                continue
            if (method, path) in NOT_JSON:
                assert len(content) == 1 and "application/json" not in content, (method, path)
                continue
            if content and "application/json" not in content:
                continue  # documented as another media type (HTML pages, images, streams)
            body = content.get("application/json", {}).get("schema")
            if body is None:
                vague.append(f"{method} {path}")
                continue
            resolved = components[body["$ref"].rsplit("/", 1)[1]] if "$ref" in body else body
            if resolved.get("type") == "object" and "properties" not in resolved or resolved == {}:
                vague.append(f"{method} {path}")
    assert vague == []
    assert "samples_format" in components["OptionsModel"]["properties"]
    options_body = schema["paths"]["/sdapi/v1/options"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert options_body == {"$ref": "#/components/schemas/OptionsModel"}
    png_info = schema["paths"]["/sdapi/v1/png-info"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert components[png_info["$ref"].rsplit("/", 1)[1]]["required"] == ["image"]
    assert "api_server_stop" in components["FlagsModel"]["properties"]
    assert set(components["SdapiProgressResponse"]["properties"]) == {
        "progress", "eta_relative", "state", "current_image", "textinfo"}

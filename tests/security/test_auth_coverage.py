"""Auth coverage, generated from the app's own route table: with --api-auth or API keys,
every route except the documented open ones (/health, /ready, and FastAPI's docs unless
--api-docs-auth) refuses anonymous callers and wrong credentials with A1111's 401."""

from __future__ import annotations

import re

import pytest
from starlette.routing import Route, WebSocketRoute

from tests.security.route_table import app_routes
from tests.serving.conftest import bearer
from webui_api.serving.groups import DOCS_ROUTES, OPEN_ROUTES, PAGE_ROUTES

OPENAI_PREFIX = "/v1/images/"  # with /v1/models: the OpenAI-compatible routes answer in OpenAI's error shape

DUMMY_ID = "0d6e2f3c-9b1e-4c4e-8e57-2a1f4f1c9a10"
KEYS = "keys:\n  - {name: alice, key: alice-secret}\n"


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", DUMMY_ID, path)


def _http_routes(app):
    for path, methods, route in app_routes(app):
        if isinstance(route, WebSocketRoute):
            yield path, "WEBSOCKET"
        elif isinstance(route, Route):
            for method in sorted(methods):
                if method != "HEAD":
                    yield path, method


@pytest.fixture(params=["basic", "keys"])
def guarded(request, make_client, tmp_path):
    if request.param == "basic":
        wrong_password = {"Authorization": "Basic dXNlcjp3cm9uZw=="}
        return make_client(api_auth=(("user", "pass"),), api_server_stop=True), wrong_password
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS)
    return make_client(api_keys_file=keys, api_server_stop=True), bearer("not-a-key")


def test_every_route_but_the_open_ones_refuses_anonymous_and_wrong_credentials(guarded):
    client, wrong = guarded
    checked = 0
    for path, method in _http_routes(client.app):
        if path in OPEN_ROUTES or path in DOCS_ROUTES or path in PAGE_ROUTES:
            continue
        if method == "WEBSOCKET":
            from starlette.websockets import WebSocketDisconnect

            with pytest.raises(WebSocketDisconnect), client.websocket_connect(_concrete(path)) as socket:
                socket.receive_text()
            continue
        for headers in ({}, wrong):
            response = client.request(method, _concrete(path), headers=headers, json={})
            assert response.status_code == 401, (method, path, response.status_code)
            if path.startswith(OPENAI_PREFIX) or path == "/v1/models":
                assert response.json()["error"]["code"] == "invalid_api_key", path
            else:
                assert set(response.json()) == {"error", "detail", "body", "errors"}
        checked += 1
    assert checked > 50  # the whole A1111 surface, not a handful


def test_the_open_routes_answer_anyone(guarded):
    client, _ = guarded
    assert client.get("/").status_code == 200 and client.get("/playground/app.js").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code in (200, 503)


def test_docs_are_open_like_a1111_unless_closed_by_flag(make_client, tmp_path):
    client = make_client(api_auth=(("user", "pass"),))
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200
    closed = make_client(api_auth=(("user", "pass"),), api_docs_auth=True)
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert closed.get(path).status_code == 401, path
    assert closed.get("/openapi.json", auth=("user", "pass")).status_code == 200

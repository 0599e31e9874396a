"""--api-auth: HTTP Basic on every /sdapi route when set, ignored when not."""

from __future__ import annotations

import base64

import pytest

GET_ROUTES = [
    "options", "cmd-flags", "samplers", "schedulers", "sd-models", "sd-vae", "upscalers", "latent-upscale-modes",
    "embeddings", "loras", "hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles", "scripts",
    "script-info", "extensions", "memory", "progress",
]
POST_ROUTES = ["txt2img", "img2img", "png-info", "interrupt", "skip", "options", "refresh-checkpoints", "refresh-vae",
               "refresh-embeddings", "refresh-loras", "unload-checkpoint", "reload-checkpoint"]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture()
def secured(make_client):
    return make_client(api_auth=(("alice", "s3cret"), ("bob", "pw")))


@pytest.mark.parametrize("route", GET_ROUTES)
def test_every_get_route_needs_credentials(secured, route):
    response = secured.get(f"/sdapi/v1/{route}")
    assert response.status_code == 401
    assert response.json() == {"error": "HTTPException", "detail": "Not authenticated", "body": "", "errors": ""}
    assert "www-authenticate" not in response.headers
    assert secured.get(f"/sdapi/v1/{route}", headers=basic("bob", "pw")).status_code == 200


@pytest.mark.parametrize("route", POST_ROUTES)
def test_every_post_route_needs_credentials(secured, route):
    assert secured.post(f"/sdapi/v1/{route}", json={}).status_code == 401


def test_wrong_password_and_malformed_header(secured):
    wrong = secured.get("/sdapi/v1/options", headers=basic("alice", "nope"))
    assert wrong.status_code == 401 and wrong.json()["detail"] == "Incorrect username or password"
    garbage = secured.get("/sdapi/v1/options", headers={"Authorization": "Basic !!!"})
    assert garbage.status_code == 401 and garbage.json()["detail"] == "Invalid authentication credentials"


def test_authorization_header_is_ignored_when_auth_is_off(client):
    """Open WebUI sends "Basic " with nothing after it; SillyTavern may send base64 of "undefined"."""
    assert client.get("/sdapi/v1/options", headers={"Authorization": "Basic "}).status_code == 200
    assert client.get("/sdapi/v1/sd-models", headers={"Authorization": "Basic dW5kZWZpbmVk"}).status_code == 200


def test_cmd_flags_never_leak_passwords(secured):
    flags = secured.get("/sdapi/v1/cmd-flags", headers=basic("alice", "s3cret")).json()
    assert "s3cret" not in str(flags)

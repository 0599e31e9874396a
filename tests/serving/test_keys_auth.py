"""API keys from a file (Bearer or X-API-Key) beside --api-auth Basic; route groups; priorities."""

from __future__ import annotations

import base64
import json

import pytest

from tests.factories import settings_for_tests
from tests.serving.conftest import bearer
from webui_api.serving.context import effective_priority
from webui_api.serving.keys import Caller, KeyFileError, load_keys

UNAUTHORIZED = {"error": "HTTPException", "body": "", "errors": ""}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_keys_file_yaml_with_plain_and_hashed_keys(keys_file):
    ring = load_keys(keys_file)
    assert [key.name for key in ring.keys] == ["alice", "bob", "scraper"]
    assert ring.match("alice-secret-key").name == "alice" and ring.match("alice-secret-key").priority == 0
    assert ring.match("bob-secret-key").name == "bob" and ring.match("bob-secret-key").priority == 20
    assert ring.match("bob-secret-key").groups == frozenset({"generate", "catalog"})
    assert ring.match("nobody-key") is None and ring.match("") is None


def test_keys_file_json(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"name": "ci", "key": "0123456789", "tier": 5, "rate_limit": "5/second"}]))
    key = load_keys(path).match("0123456789")
    assert (key.name, key.priority, key.rate_limit) == ("ci", 5, "5/second")


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "a", "key": "0123456789", "colour": "red"}, "unknown fields"),
    ({"name": "a"}, "exactly one of 'key'"),
    ({"name": "a", "key": "short"}, "at least 8"),
    ({"name": "a", "sha256": "abcd"}, "64 hex digits"),
    ({"name": "a", "key": "0123456789", "tier": "urgent"}, "tier must be one of"),
    ({"name": "a", "key": "0123456789", "rate_limit": "ten per minute"}, "is not like '10/minute'"),
    ({"name": "a", "key": "0123456789", "groups": ["generate", "root"]}, "unknown route groups"),
])
def test_bad_keys_file_entries_are_refused_with_the_reason(tmp_path, entry, message):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(KeyFileError, match=message):
        load_keys(path)


def test_duplicate_names_are_refused(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"name": "a", "key": "0123456789"}, {"name": "a", "key": "9876543210"}]))
    with pytest.raises(KeyFileError, match="unique"):
        load_keys(path)


def test_keys_and_basic_auth_are_both_accepted(make_client, keys_file):
    client = make_client(api_keys_file=keys_file, api_auth=(("carol", "pw"),))
    assert client.get("/sdapi/v1/samplers", headers=bearer("alice-secret-key")).status_code == 200
    assert client.get("/sdapi/v1/samplers", headers={"X-API-Key": "bob-secret-key"}).status_code == 200
    assert client.get("/sdapi/v1/samplers", headers=basic("carol", "pw")).status_code == 200
    missing = client.get("/sdapi/v1/samplers")
    assert missing.status_code == 401 and missing.json() == {**UNAUTHORIZED, "detail": "Not authenticated"}
    wrong_key = client.get("/sdapi/v1/samplers", headers=bearer("alice-secret-kez"))
    assert wrong_key.status_code == 401 and wrong_key.json() == {**UNAUTHORIZED, "detail": "Invalid API key"}
    assert client.get("/sdapi/v1/samplers", headers=basic("carol", "nope")).status_code == 401


def test_keys_only_refuses_basic_credentials(make_client, keys_file):
    client = make_client(api_keys_file=keys_file)
    assert client.get("/sdapi/v1/samplers", headers=basic("carol", "pw")).status_code == 401
    assert client.get("/sdapi/v1/samplers", headers={"X-API-Key": "alice-secret-key"}).status_code == 200


def test_route_groups_limit_what_a_key_may_call(make_client, keys_file):
    client = make_client(api_keys_file=keys_file)
    refused = client.get("/sdapi/v1/options", headers=bearer("bob-secret-key"))
    assert refused.status_code == 403
    assert "'options'" in refused.json()["detail"] and "bob" in refused.json()["detail"]
    assert client.get("/sdapi/v1/sd-models", headers=bearer("bob-secret-key")).status_code == 200
    assert client.get("/metrics", headers=bearer("bob-secret-key")).status_code == 403
    assert client.get("/metrics", headers=bearer("scraper-secret-key")).status_code == 200
    assert client.get("/sdapi/v1/samplers", headers=bearer("scraper-secret-key")).status_code == 403
    assert client.get("/agent-scheduler/v1/queue", headers=bearer("scraper-secret-key")).status_code == 403


def test_without_any_auth_configured_keys_and_headers_are_ignored(client):
    assert client.get("/sdapi/v1/samplers", headers=bearer("whatever")).status_code == 200
    assert client.get("/sdapi/v1/samplers", headers={"Authorization": "Basic "}).status_code == 200


def test_health_and_ready_need_no_credentials(make_client, keys_file):
    client = make_client(api_keys_file=keys_file)
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 401


def test_requested_priority_is_capped_by_the_key_tier():
    high, low = Caller("a", "key:a", priority=0), Caller("b", "key:b", priority=20)
    assert effective_priority(high, None) == 0
    assert effective_priority(high, "low") == 20  # a high key may ask to go later
    assert effective_priority(low, "high") == 20  # a low key cannot jump the line
    assert effective_priority(low, 30) == 30
    anonymous = Caller("anonymous", "ip:x")
    assert effective_priority(anonymous, 0) == 10


def test_a_bad_priority_header_is_a_400(client):
    from tests.api.payloads import webuiapi_txt2img

    response = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(steps=1), headers={"X-Priority": "asap"})
    assert response.status_code == 400 and "tier must be one of" in response.json()["detail"]


def test_a_bad_keys_file_fails_app_creation(tmp_path):
    from webui_api.app import create_app

    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - name: x\n")
    with pytest.raises(KeyFileError, match="exactly one of"):
        create_app(settings_for_tests(tmp_path, api_keys_file=path))

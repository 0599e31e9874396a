"""Under --ray every answer names the ingress replica that gave it; a single server adds nothing."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.factories import settings_for_tests
from webui_api.app import REPLICA_HEADER, create_app


def test_answers_name_the_ingress_replica_only_when_there_is_one(engine, tmp_path):
    settings = settings_for_tests(tmp_path, skip_load_model_at_start=True)
    with TestClient(create_app(settings, engine=engine, replica="abc123")) as client:
        assert client.get("/sdapi/v1/progress").headers[REPLICA_HEADER] == "abc123"
        assert client.get("/agent-scheduler/v1/task/none").headers[REPLICA_HEADER] == "abc123"
    with TestClient(create_app(settings, engine=engine)) as client:
        assert REPLICA_HEADER not in client.get("/sdapi/v1/progress").headers

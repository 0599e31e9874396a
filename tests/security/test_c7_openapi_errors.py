"""The OpenAPI document lists the refusals the routes really answer, with A1111's error body."""

from __future__ import annotations

import pytest

REF = "#/components/schemas/A1111Error"


@pytest.fixture()
def document(client):
    return client.get("/openapi.json").json()


def test_the_error_body_model_is_a1111s(document):
    schema = document["components"]["schemas"]["A1111Error"]
    assert set(schema["required"]) == {"error", "detail", "body", "errors"}


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/agent-scheduler/v1/queue/txt2img",
                                  "/sdapi/v1/extra-single-image", "/controlnet/detect"])
def test_work_routes_list_every_refusal_with_the_error_body(document, path):
    responses = document["paths"][path]["post"]["responses"]
    for status in ("400", "404", "413", "429", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": REF}, status
    any_of = responses["422"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": REF} in any_of and {"$ref": "#/components/schemas/HTTPValidationError"} in any_of


def test_a_real_refusal_matches_what_the_document_says(client, document):
    response = client.post("/sdapi/v1/img2img", json={"prompt": "x"})
    assert response.status_code == 404
    documented = document["paths"]["/sdapi/v1/img2img"]["post"]["responses"]["404"]
    assert documented["content"]["application/json"]["schema"] == {"$ref": REF}
    assert set(response.json()) == set(document["components"]["schemas"]["A1111Error"]["properties"])


def test_get_routes_have_no_body_limit_but_the_other_refusals(document):
    responses = document["paths"]["/sdapi/v1/sd-models"]["get"]["responses"]
    assert "413" not in responses and "429" in responses and "503" in responses
    assert document["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}

"""The playground's page and assets as served (no browser: tests/playground drives one)."""

from __future__ import annotations

import re


def test_page_and_assets_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert '<label for="prompt">Prompt</label>' in page.text and ">Generate</button>" in page.text
    for name, media in (("app.js", "text/javascript"), ("style.css", "text/css")):
        answer = client.get(f"/playground/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(media)


def test_page_references_no_external_host(client):
    texts = [client.get(path).text for path in ("/", "/playground/app.js", "/playground/style.css")]
    for text in texts:
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), "an external URL"


def test_unknown_assets_and_paths_are_404(client):
    for path in ("/playground/index.html", "/playground/..%2Fpyproject.toml", "/playground/nope.js"):
        assert client.get(path).status_code == 404


def test_page_needs_no_credentials_but_the_api_does(make_client, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text('[{"name": "k", "key": "0123456789"}]')
    client = make_client(api_keys_file=keys)
    assert client.get("/").status_code == 200
    assert client.get("/sdapi/v1/samplers").status_code == 401

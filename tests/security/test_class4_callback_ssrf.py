"""Class 4: callback_url cannot aim the server at its own network. Refused by default;
private, loopback, link-local and odd spellings of them refused unless --callback-allow lists
them; the checked address is the one connected to; redirects are not followed."""

from __future__ import annotations

import http.server
import threading

import pytest

from tests.api.payloads import webuiapi_txt2img
from tests.serving.conftest import bearer
from webui_api.errors import BadRequest
from webui_api.task_callback import check_callback_url, post_callback
from webui_api.url_policy import RefusedUrl, UrlPolicy, check_url, redacted

PREFIX = "/agent-scheduler/v1"


def fake_dns(table):
    """A resolver for names that must never reach a real DNS server in tests."""
    def resolve(host, port):
        if host in table:
            return list(table[host])
        import socket

        return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]  # numeric forms
    return resolve


PUBLIC_DNS = fake_dns({"hooks.example.com": ["93.184.216.34"], "rebind.example.com": ["10.1.2.3"],
                       "mixed.example.com": ["93.184.216.34", "127.0.0.1"], "local.test": ["127.0.0.1"]})


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:7861/sdapi/v1/interrupt",  # the server's own routes
    "http://localhost/x",
    "http://2130706433/x",  # 127.0.0.1 as one decimal number
    "http://0x7f.1/x",  # hex and short forms
    "http://017700000001/x",  # octal
    "http://[::1]/x",
    "http://[::ffff:127.0.0.1]/x",  # IPv4-mapped IPv6
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://10.0.0.5/x", "http://192.168.1.1/x", "http://172.16.0.1/x", "http://100.64.0.1/x",
    "http://0.0.0.0/x", "http://224.0.0.1/x", "http://240.0.0.1/x",
    "http://rebind.example.com/x",  # a public-looking name with a private address
    "http://mixed.example.com/x",  # one bad address is enough
])
def test_private_targets_are_refused_in_every_spelling(url):
    with pytest.raises(RefusedUrl):
        check_url(url, UrlPolicy(public=True), PUBLIC_DNS)


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://hooks.example.com/x", "http"), ("file:///etc/passwd", "http"), ("http:///x", "host"),
    ("http://user:pw@hooks.example.com/x", "user name or password"), ("http://hooks.example.com:99999/", "port"),
    ("http://nowhere.invalid/x", "does not resolve"),
])
def test_malformed_urls_are_refused(url, reason):
    with pytest.raises(RefusedUrl, match=reason):
        check_url(url, UrlPolicy(public=True), fake_dns({"nowhere.invalid": []}))


def test_public_targets_pass_and_the_checked_address_is_pinned():
    target = check_url("https://hooks.example.com/done?token=abc", UrlPolicy(public=True), PUBLIC_DNS)
    assert (target.address, target.host, target.port, target.path) == ("93.184.216.34", "hooks.example.com", 443,
                                                                      "/done?token=abc")


def test_the_allow_list_opens_exactly_what_it_names():
    policy = UrlPolicy.parse(["10.0.0.0/8", "local.test"])
    assert check_url("http://10.9.8.7/x", policy, PUBLIC_DNS).address == "10.9.8.7"
    assert check_url("http://local.test:8080/x", policy, PUBLIC_DNS).address == "127.0.0.1"
    for url in ("http://127.0.0.1/x", "http://192.168.0.1/x", "http://169.254.169.254/"):
        with pytest.raises(RefusedUrl):
            check_url(url, policy, PUBLIC_DNS)
    with pytest.raises(ValueError, match="not a host name"):
        UrlPolicy.parse(["http://x/"])


def test_callbacks_are_off_by_default_and_public_only_for_key_callers():
    with pytest.raises(BadRequest, match="not allowed on this server"):
        check_callback_url("http://hooks.example.com/x", (), "ip:127.0.0.1", PUBLIC_DNS)
    with pytest.raises(BadRequest, match="not allowed on this server"):
        check_callback_url("http://hooks.example.com/x", (), "user:ann", PUBLIC_DNS)
    assert check_callback_url("http://hooks.example.com/x", (), "key:alice", PUBLIC_DNS).address == "93.184.216.34"
    with pytest.raises(BadRequest, match="not a public address"):
        check_callback_url("http://127.0.0.1/x", (), "key:alice", PUBLIC_DNS)


def test_logged_urls_carry_no_credentials_or_query():
    shown = redacted("https://user:secret@hooks.example.com:8443/cb?token=SECRET")
    assert shown == "https://hooks.example.com:8443/cb?..." and "secret" not in shown.lower()


class Recorder:
    """A loopback HTTP server answering each POST with `status` (and a Location for redirects)."""

    def __init__(self, status=200):
        self.hits: list[tuple[str, str]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                recorder.hits.append((self.path, self.headers["Host"]))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"http://127.0.0.1:{recorder.port}/elsewhere")
                self.end_headers()

            def log_message(self, *args):
                return

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_redirects_are_not_followed():
    sink = Recorder(status=302)
    try:
        delivered = post_callback(f"http://127.0.0.1:{sink.port}/cb", "t", "done", [], UrlPolicy.parse(["127.0.0.1"]),
                                  pauses=(0.0, 0.0))
    finally:
        sink.close()
    assert delivered is False and [path for path, _ in sink.hits] == ["/cb"]


def test_the_connection_goes_to_the_checked_address_with_the_original_host_name():
    sink = Recorder()
    try:
        url = f"http://callback.internal:{sink.port}/cb?token=1"  # resolvable only by the fake resolver
        policy = UrlPolicy.parse(["callback.internal"])
        assert post_callback(url, "t", "done", [], policy, resolve=fake_dns({"callback.internal": ["127.0.0.1"]}))
    finally:
        sink.close()
    assert sink.hits == [("/cb?token=1", f"callback.internal:{sink.port}")]


def test_a_name_that_turns_private_after_queueing_is_refused_at_send_time():
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    resolve = lambda host, port: next(answers)  # noqa: E731 (first check public, then rebinding)
    policy = UrlPolicy(public=True)
    assert check_url("http://flip.example.com/x", policy, resolve).address == "93.184.216.34"
    assert post_callback("http://flip.example.com/x", "t", "done", [], policy, pauses=(), resolve=resolve) is False


def test_queueing_refuses_a_loopback_callback_by_default_and_accepts_it_when_allowed(make_client, tmp_path):
    url_of_itself = "http://127.0.0.1:7861/sdapi/v1/interrupt"
    plain = make_client()
    response = plain.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1, callback_url=url_of_itself))
    assert response.status_code == 400 and set(response.json()) == {"error", "detail", "body", "errors"}
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {name: alice, key: alice-secret}\n")
    keyed = make_client(api_keys_file=keys)
    refused = keyed.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1, callback_url=url_of_itself),
                         headers=bearer("alice-secret"))
    assert refused.status_code == 400 and "127.0.0.1" in refused.json()["detail"]
    allowed = make_client(callback_allow=("127.0.0.0/8",))
    accepted = allowed.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1, callback_url=url_of_itself))
    assert accepted.status_code == 200


def test_the_allow_list_flag_is_checked_at_start(tmp_path):
    from webui_api.cli import parse_args

    settings, _ = parse_args(["--data-dir", str(tmp_path), "--callback-allow", "10.0.0.0/8, hooks.internal,public"])
    assert settings.callback_allow == ("10.0.0.0/8", "hooks.internal", "public")
    with pytest.raises(ValueError, match="callback-allow"):
        parse_args(["--data-dir", str(tmp_path), "--callback-allow", "http://hooks.internal/"])

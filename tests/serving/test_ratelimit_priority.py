"""Rate limits per key / per client (memory and a real Redis), and key tiers reaching the queue."""

from __future__ import annotations

import threading
import time

from tests.api.payloads import webuiapi_txt2img
from tests.serving.conftest import bearer
from tests.test_scheduler_guards import hold_worker
from webui_api.serving.ratelimit import RateLimiter

TINY = webuiapi_txt2img(steps=1, width=64, height=64, seed=5)


def test_the_third_request_of_a_two_per_minute_key_gets_429(make_client, keys_file):
    client = make_client(api_keys_file=keys_file)
    for _ in range(2):
        assert client.post("/sdapi/v1/txt2img", json=TINY, headers=bearer("alice-secret-key")).status_code == 200
    refused = client.post("/sdapi/v1/txt2img", json=TINY, headers=bearer("alice-secret-key"))
    assert refused.status_code == 429
    body = refused.json()
    assert set(body) == {"error", "detail", "body", "errors"} and body["error"] == "HTTPException"
    assert "alice" in body["detail"] and "2/minute" in body["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # other keys have their own budget; polling is never counted
    assert client.post("/sdapi/v1/txt2img", json=TINY, headers=bearer("bob-secret-key")).status_code == 200
    assert client.get("/sdapi/v1/progress", headers=bearer("alice-secret-key")).status_code == 200


def test_without_keys_the_default_limit_applies_per_client_address(make_client):
    client = make_client(rate_limit="1/minute")
    assert client.post("/sdapi/v1/txt2img", json=TINY).status_code == 200
    refused = client.post("/agent-scheduler/v1/queue/txt2img", json=TINY)  # async submissions count too
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert client.get("/sdapi/v1/samplers").status_code == 200


def test_moving_window_refuses_without_counting_and_reports_the_wait():
    limiter = RateLimiter("memory://")
    assert [limiter.hit("k", "3/minute").allowed for _ in range(4)] == [True, True, True, False]
    assert 55 <= limiter.hit("k", "3/minute").retry_after <= 60
    assert limiter.hit("other", "3/minute").allowed


def test_redis_rate_limits_are_shared_between_server_processes(redis_url):
    first, second = RateLimiter(redis_url), RateLimiter(redis_url)  # two processes, one Redis
    assert first.hit("key:alice", "2/minute").allowed and second.hit("key:alice", "2/minute").allowed
    refused = first.hit("key:alice", "2/minute")
    assert not refused.allowed and 1 <= refused.retry_after <= 60
    assert second.hit("key:bob", "2/minute").allowed


def test_redis_rate_limit_through_the_api(make_client, keys_file, redis_url):
    client = make_client(api_keys_file=keys_file, redis_url=redis_url)
    statuses = [client.post("/sdapi/v1/txt2img", json=TINY, headers=bearer("alice-secret-key")).status_code
                for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_a_high_tier_key_overtakes_a_low_tier_key_in_the_queue(spy_client, keys_file):
    client, spy = spy_client(api_keys_file=keys_file)
    blocker = hold_worker(client.app.state.runtime.scheduler)
    answers = {}

    def send(name, secret):
        payload = {**TINY, "prompt": name}
        answers[name] = client.post("/sdapi/v1/txt2img", json=payload, headers=bearer(secret)).status_code

    low = threading.Thread(target=send, args=("low", "bob-secret-key"))
    low.start()
    _wait_until(lambda: client.app.state.runtime.scheduler.waiting_generations == 1)
    high = threading.Thread(target=send, args=("high", "alice-secret-key"))
    high.start()
    _wait_until(lambda: client.app.state.runtime.scheduler.waiting_generations == 2)
    blocker.release.set()
    low.join(60)
    high.join(60)
    assert answers == {"low": 200, "high": 200}
    assert spy.prompts == ["high", "low"]


def _wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)

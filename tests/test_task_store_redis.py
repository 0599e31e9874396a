"""The Redis task store: TaskStore's semantics plus claims and leases for several ingresses.

Runs against the Redis at $REDIS_URL when one answers, else against fakeredis when installed;
skipped (with the reason) when neither is there.
"""

from __future__ import annotations

import os
import uuid

import pytest

from webui_api.task_store_redis import RedisTaskStore
from webui_api.tasks import DONE, FAILED, PENDING, RUNNING


def _client() -> object:
    url = os.environ.get("REDIS_URL")
    if url:
        import redis

        client = redis.Redis.from_url(url)
        try:
            client.ping()
            return client
        except redis.RedisError:
            pass
    fakeredis = pytest.importorskip("fakeredis", reason="no Redis reachable at $REDIS_URL and no fakeredis")
    return fakeredis.FakeRedis()


@pytest.fixture()
def client(monkeypatch):
    import webui_api.task_store_redis as module

    monkeypatch.setattr(module, "PREFIX", f"webui-api-test:{uuid.uuid4().hex}:")  # a fresh namespace per test
    connection = _client()
    yield connection
    for key in connection.scan_iter(f"{module.PREFIX}*"):
        connection.delete(key)


def test_claim_lets_exactly_one_runner_take_a_task(client):
    first, second = RedisTaskStore(client=client), RedisTaskStore(client=client)
    task = first.create("txt2img", {"prompt": "a"})
    assert first.claim(task.id) is True
    assert second.claim(task.id) is False
    record = second.get(task.id)
    assert record.status == RUNNING and record.attempts == 1
    assert second.next_pending() is None


def test_line_order_tiers_and_positions(client):
    store = RedisTaskStore(client=client)
    normal = store.create("txt2img", {"n": 1})
    later = store.create("txt2img", {"n": 2})
    urgent = store.create("txt2img", {"n": 3}, tier=0)
    assert [t.id for t in store.pending()] == [urgent.id, normal.id, later.id]
    assert store.position(store.get(later.id)) == 2
    assert store.count(PENDING) == 3


def test_results_are_readable_from_any_store_object(client):
    writer, reader = RedisTaskStore(client=client), RedisTaskStore(client=client)
    task = writer.create("txt2img", {"prompt": "a"}, owner="key:alice")
    writer.claim(task.id)
    writer.finish(task.id, {"images": ["abc"], "info": "{}", "parameters": {}})
    assert reader.get(task.id).status == DONE
    assert reader.result(task.id) == {"images": ["abc"], "info": "{}"}
    assert reader.count(DONE, owner="key:alice") == 1 and reader.count(DONE, owner="key:bob") == 0


def test_recover_requeues_only_expired_leases_then_fails_after_two_runs(client):
    live = RedisTaskStore(client=client, lease_seconds=60)
    task, held = live.create("txt2img", {"n": 1}), live.create("txt2img", {"n": 2})
    live.claim(task.id)
    live.claim(held.id)
    import time

    later = time.time() + 30
    live.renew(held.id)
    assert live.recover(now=later).requeued == 0  # both leases still valid: a live runner holds them
    report = live.recover(now=time.time() + 120)
    assert report.requeued == 2 and live.get(task.id).status == PENDING
    live.claim(task.id)  # second attempt dies too
    report = live.recover(now=time.time() + 240)
    assert report.failed == 1 and live.get(task.id).status == FAILED


def test_return_to_queue_delete_and_retention(client):
    store = RedisTaskStore(client=client)
    task = store.create("txt2img", {"n": 1})
    store.claim(task.id)
    store.return_to_queue(task.id)
    assert store.get(task.id).status == PENDING and store.get(task.id).attempts == 0
    store.claim(task.id)
    store.fail(task.id, "boom")
    assert store.purge_finished(3600) == 0
    import time

    assert store.purge_finished(3600, now=time.time() + 7200) == 1
    assert store.get(task.id) is None and store.delete(task.id) is False


def test_caps_drop_the_oldest_finished_tasks(client):
    store = RedisTaskStore(client=client)
    ids = []
    for n in range(3):
        task = store.create("txt2img", {"n": n})
        store.claim(task.id)
        store.finish(task.id, {"images": [], "info": "{}"})
        ids.append(task.id)
    assert store.enforce_caps(max_count=1, max_bytes=0) == 2
    assert [store.get(i) is not None for i in ids] == [False, False, True]
    assert store.room_for_more(max_count=1, max_bytes=0)

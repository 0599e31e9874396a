"""Class 8: async tasks use bounded disk. The request is stored once (result files keep only
images and info), finished tasks are capped by count and bytes (oldest first), a full store
refuses new tasks with 503, and /queue answers a bounded page without image data."""

from __future__ import annotations

import json

from tests.api.payloads import webuiapi_txt2img
from tests.test_scheduler_guards import hold_worker
from webui_api.tasks import PENDING, TaskStore

PREFIX = "/agent-scheduler/v1"


def _finished(store: TaskStore, count: int, payload_bytes: int = 10) -> list[str]:
    ids = []
    for index in range(count):
        task = store.create("txt2img", {"prompt": "x" * payload_bytes, "seed": index})
        store.finish(task.id, {"images": ["A" * payload_bytes], "info": "{}", "parameters": {"prompt": "x" * 10_000}})
        ids.append(task.id)
    return ids


def test_result_files_do_not_repeat_the_request(tmp_path):
    store = TaskStore(tmp_path)
    [task_id] = _finished(store, 1)
    assert json.loads(store.result_path(task_id).read_text()) == {"images": ["A" * 10], "info": "{}"}
    assert store.get(task_id).size == len(json.dumps({"prompt": "x" * 10, "seed": 0})) + len(
        json.dumps({"images": ["A" * 10], "info": "{}"}))


def test_the_count_cap_deletes_the_oldest_finished_tasks(tmp_path):
    store = TaskStore(tmp_path)
    ids = _finished(store, 5)
    waiting = store.create("txt2img", {})
    assert store.enforce_caps(max_count=2, max_bytes=0) == 3
    assert [store.get(i) is not None for i in ids] == [False, False, False, True, True]
    assert not store.result_path(ids[0]).exists()
    assert store.get(waiting.id).status == PENDING  # pending tasks are never deleted


def test_the_byte_cap_deletes_until_the_store_fits(tmp_path):
    store = TaskStore(tmp_path)
    ids = _finished(store, 4, payload_bytes=1000)
    one = store.get(ids[0]).size
    assert store.enforce_caps(max_count=0, max_bytes=2 * one + 1) == 2
    assert [store.get(i) is not None for i in ids] == [False, False, True, True]
    assert store.enforce_caps(max_count=0, max_bytes=0) == 0  # 0: no cap


def test_a_full_store_refuses_new_tasks_with_503(make_client):
    client = make_client(task_max_count=2)
    blocker = hold_worker(client.app.state.runtime.scheduler)
    try:
        codes = [client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1)).status_code for _ in range(4)]
    finally:
        blocker.release.set()
    assert codes[:2] == [200, 200] and codes[-1] == 503  # one may already run: then the third still fits


def test_finished_tasks_beyond_the_cap_are_deleted_by_the_runner(make_client):
    client = make_client(task_max_count=1)
    first = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1)).json()["task_id"]
    second = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1)).json()["task_id"]
    store = client.app.state.task_runner.store
    import time

    deadline = time.monotonic() + 60
    while store.get(first) is not None or store.get(second).status == PENDING:
        assert time.monotonic() < deadline, "the first task was not deleted after the second finished"
        time.sleep(0.05)
    assert store.get(second) is not None


def test_queue_pages_are_bounded_and_carry_no_image_data(make_client):
    from tests.controlnet.helpers import b64_png, pattern_image

    client = make_client()
    image = b64_png(pattern_image())
    store = client.app.state.task_runner.store
    blocker = hold_worker(client.app.state.runtime.scheduler)
    try:
        for _ in range(3):
            store.create("img2img", {"prompt": "p", "init_images": [image], "callback_url": None})
        client.app.state.task_runner.wake()
        for _ in range(120):
            store.create("txt2img", {"prompt": "p"})
        body = client.get(f"{PREFIX}/queue", params={"limit": 100000}).json()
    finally:
        blocker.release.set()
    assert len(body["pending_tasks"]) == 100 and body["total_pending_tasks"] >= 120
    assert image not in json.dumps(body)
    assert any(t["type"] == "img2img" and t["params"]["init_images"][0].startswith("<image sha256:")
               for t in body["pending_tasks"])
    assert client.get(f"{PREFIX}/queue", params={"offset": 2**70}).status_code in (200, 422)

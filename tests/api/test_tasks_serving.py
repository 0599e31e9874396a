"""Async tasks with the serving layer: img2img tasks, SSE progress, tiers, retention."""

from __future__ import annotations

import json
import sqlite3
import time

from tests.api.payloads import webuiapi_txt2img
from tests.api.test_tasks import PREFIX, wait_for_status
from tests.serving.conftest import bearer, keys_file  # noqa: F401  (a fixture)
from tests.test_scheduler_guards import hold_worker
from webui_api.tasks import DONE, FAILED, PENDING, TaskStore


def test_an_img2img_task_gives_the_same_images_as_the_synchronous_route(client):
    init = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(steps=2, seed=3)).json()["images"][0]
    payload = webuiapi_txt2img(steps=2, seed=9, init_images=[f"data:image/png;base64,{init}"], denoising_strength=0.6)
    task_id = client.post(f"{PREFIX}/queue/img2img", json=payload).json()["task_id"]
    task = wait_for_status(client, task_id)
    assert task["status"] == "done" and task["type"] == "img2img"
    results = client.get(f"{PREFIX}/task/{task_id}/results").json()["data"]
    sync = client.post("/sdapi/v1/img2img", json=payload).json()
    assert [entry["image"] for entry in results] == [f"data:image/png;base64,{b}" for b in sync["images"]]


def test_an_img2img_task_without_images_is_refused_at_once(client):
    response = client.post(f"{PREFIX}/queue/img2img", json=webuiapi_txt2img(steps=2))
    assert response.status_code == 400 and "init_images" in response.json()["errors"]


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_task_events_stream_status_and_progress_until_done(client):
    blocker = hold_worker(client.app.state.runtime.scheduler)
    task_id = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=6)).json()["task_id"]
    wait_for_status(client, task_id, wanted=("running",))
    blocker.release.set()
    with client.stream("GET", f"{PREFIX}/task/{task_id}/events", params={"interval": 0.1}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = parse_sse("".join(stream.iter_text()))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "status" and events[0][1]["status"] == "running"
    assert kinds[-1] == "done" and events[-1][1] == {"task_id": task_id, "status": "done", "error": None}
    assert ("status", {"task_id": task_id, "status": "done", "position": None}) in events
    progress = [data for kind, data in events if kind == "progress"]
    assert all(0 <= (p["progress"] or 0) <= 1 for p in progress)


def test_events_of_a_finished_or_unknown_task(client):
    task_id = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=2)).json()["task_id"]
    wait_for_status(client, task_id)
    events = parse_sse(client.get(f"{PREFIX}/task/{task_id}/events").text)
    assert [kind for kind, _ in events] == ["status", "done"]
    assert client.get(f"{PREFIX}/task/nope/events").json() == {"success": False, "message": "Task not found"}


def test_a_high_tier_task_runs_before_normal_ones(make_client, keys_file):  # noqa: F811 (the fixture imported above)
    client = make_client(api_keys_file=keys_file, api_auth=(("carol", "pw"),))
    blocker = hold_worker(client.app.state.runtime.scheduler)
    carol = {"Authorization": "Basic Y2Fyb2w6cHc="}
    try:
        client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1), headers=carol).json()["task_id"]
        normal = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1), headers=carol).json()["task_id"]
        high = client.post(
            f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1), headers=bearer("alice-secret-key")
        ).json()["task_id"]
        lowered = client.post(
            f"{PREFIX}/queue/txt2img",
            json={**webuiapi_txt2img(steps=1), "priority": "low"},
            headers=bearer("alice-secret-key"),
        ).json()["task_id"]
        pending = [
            task.id for task in client.app.state.task_runner.store.pending()
        ]  # everyone's (callers see their own)
        assert pending.index(high) < pending.index(normal) < pending.index(lowered)
    finally:
        blocker.release.set()
    store = client.app.state.task_runner.store
    assert store.get(high).owner == "key:alice" and store.get(high).tier == 0 and store.get(normal).tier == 10
    assert store.get(lowered).tier == 20 and store.get(normal).owner == "user:carol"


def test_retention_purges_old_finished_tasks_and_their_results(tmp_path):
    store = TaskStore(tmp_path)
    old_done, old_failed, fresh, waiting = (store.create("txt2img", {"seed": i}) for i in range(4))
    store.finish(old_done.id, {"images": []})
    store.fail(old_failed.id, "boom")
    store.finish(fresh.id, {"images": []})
    later = time.time() + 3600
    store._execute("UPDATE tasks SET updated_at = updated_at - 7200 WHERE id IN (?, ?, ?)",
                   (old_done.id, old_failed.id, waiting.id))
    assert store.purge_finished(3600, now=later - 3600 + 1) == 2
    assert store.get(old_done.id) is None and store.get(old_failed.id) is None
    assert not store.result_path(old_done.id).exists()
    assert store.get(fresh.id).status == DONE and store.result(fresh.id) == {"images": []}
    assert store.get(waiting.id).status == PENDING  # never purged: not finished


def test_the_runner_purges_at_start(make_client, tmp_path):
    store = TaskStore(tmp_path / "tasks")
    task = store.create("txt2img", {})
    store.fail(task.id, "old")
    store._execute("UPDATE tasks SET updated_at = 0 WHERE id = ?", (task.id,))
    store.close()
    client = make_client(task_retention_hours=1)
    deadline = time.monotonic() + 10
    while client.app.state.task_runner.store.get(task.id) is not None:
        assert time.monotonic() < deadline, "the expired task was not purged"
        time.sleep(0.05)


def test_a_store_from_before_the_owner_column_is_migrated(tmp_path):
    db = sqlite3.connect(tmp_path / "tasks.sqlite3")
    db.execute(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, type TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL,"
        " priority INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, callback_url TEXT, error TEXT,"
        " created_at REAL NOT NULL, updated_at REAL NOT NULL)"
    )
    db.execute(
        "INSERT INTO tasks VALUES ('0d6e2f3c-9b1e-4c4e-8e57-2a1f4f1c9a10', 'txt2img', '{}', 'failed', 1, 1,"
        " NULL, 'x', 1.0, 1.0)"
    )
    db.commit()
    db.close()
    store = TaskStore(tmp_path)
    task = store.get("0d6e2f3c-9b1e-4c4e-8e57-2a1f4f1c9a10")
    assert task.status == FAILED and task.owner is None
    assert store.create("img2img", {}, owner="x").owner == "x"


def test_a_failed_task_is_audited_and_counted(make_client, engine, monkeypatch, tmp_path):
    """A task whose engine call fails (here: the checkpoint vanished between queueing and running;
    an unknown name alone now falls back to the selected model, as in A1111)."""
    from webui_api.errors import UnknownCheckpoint

    def checkpoint_gone(*args, **kwargs):
        raise UnknownCheckpoint("no-such-model")

    monkeypatch.setattr(engine, "txt2img", checkpoint_gone)
    audit = tmp_path / "audit.jsonl"
    client = make_client(audit_log=audit)
    body = webuiapi_txt2img(steps=2)
    task_id = client.post(f"{PREFIX}/queue/txt2img", json=body).json()["task_id"]
    assert wait_for_status(client, task_id)["status"] == "failed"
    entry = json.loads(audit.read_text().splitlines()[-1])
    assert entry["task_id"] == task_id and entry["status"] == "error" and "no-such-model" in entry["error"]
    assert 'webui_api_errors_total{status="404",type="UnknownCheckpoint"} 1.0' in client.get("/metrics").text

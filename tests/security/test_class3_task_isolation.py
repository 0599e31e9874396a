"""Class 3: with API keys (or --api-auth), async tasks belong to the caller that queued them;
another caller can neither list, read, follow, fetch nor delete them. Admin-tier keys see all.
Without auth, every caller sees every task (agent-scheduler's behaviour)."""

from __future__ import annotations

import time

import pytest

from tests.api.payloads import webuiapi_txt2img
from tests.serving.conftest import bearer

PREFIX = "/agent-scheduler/v1"
KEYS = """
keys:
  - {name: alice, key: alice-secret}
  - {name: mallory, key: mallory-secret}
  - {name: ops, key: ops-secret, tier: admin}
"""
NOT_FOUND = {"success": False, "message": "Task not found"}
ALICE, MALLORY, OPS = bearer("alice-secret"), bearer("mallory-secret"), bearer("ops-secret")


@pytest.fixture()
def shared(make_client, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS)
    return make_client(api_keys_file=keys, callback_allow=("127.0.0.1",))


def wait_for_status(client, task_id, headers=None, auth=None, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"{PREFIX}/task/{task_id}", headers=headers, auth=auth).json()["data"]
        if data["status"] in ("done", "failed", "interrupted"):
            return data
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish")


def _queue(client, headers, **fields):
    body = webuiapi_txt2img(steps=1, **fields)
    response = client.post(f"{PREFIX}/queue/txt2img", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def test_another_key_cannot_read_follow_or_delete_a_task(shared):
    task_id = _queue(shared, ALICE)
    assert wait_for_status(shared, task_id, headers=ALICE)["status"] == "done"
    for path in (f"/task/{task_id}", f"/task/{task_id}/position", f"/task/{task_id}/results",
                 f"/results/{task_id}", f"/task/{task_id}/events"):
        assert shared.get(PREFIX + path, headers=MALLORY).json() == NOT_FOUND, path
        assert shared.get(PREFIX + path, headers=ALICE).status_code == 200
    assert shared.delete(f"{PREFIX}/task/{task_id}", headers=MALLORY).json() == NOT_FOUND
    assert shared.post(f"{PREFIX}/delete/{task_id}", headers=MALLORY).json() == NOT_FOUND
    assert shared.get(f"{PREFIX}/task/{task_id}", headers=ALICE).json()["success"] is True  # still there


def test_the_queue_lists_only_the_callers_own_tasks(shared):
    from tests.test_scheduler_guards import hold_worker

    blocker = hold_worker(shared.app.state.runtime.scheduler)
    try:
        mine = {_queue(shared, ALICE, callback_url="http://127.0.0.1:9/x?token=SECRET") for _ in range(2)}
        theirs = _queue(shared, MALLORY)
        alice_view = shared.get(f"{PREFIX}/queue", headers=ALICE).json()
        mallory_view = shared.get(f"{PREFIX}/queue", headers=MALLORY).json()
        admin_view = shared.get(f"{PREFIX}/queue", headers=OPS).json()
    finally:
        blocker.release.set()
    assert {t["id"] for t in alice_view["pending_tasks"]} <= mine and alice_view["total_pending_tasks"] <= 2
    assert {t["id"] for t in mallory_view["pending_tasks"]} <= {theirs}
    assert "SECRET" not in str(mallory_view) and "SECRET" not in str(admin_view["pending_tasks"])
    assert mallory_view["current_task_id"] in (None, theirs)
    assert {t["id"] for t in admin_view["pending_tasks"]} | {admin_view["current_task_id"]} >= mine | {theirs}


def test_an_admin_key_sees_and_deletes_any_task(shared):
    task_id = _queue(shared, ALICE)
    wait_for_status(shared, task_id, headers=ALICE)
    assert shared.get(f"{PREFIX}/task/{task_id}", headers=OPS).json()["data"]["id"] == task_id
    assert shared.delete(f"{PREFIX}/task/{task_id}", headers=OPS).json()["success"] is True
    assert shared.get(f"{PREFIX}/task/{task_id}", headers=ALICE).json() == NOT_FOUND


def test_basic_auth_users_are_isolated_too(make_client):
    client = make_client(api_auth=(("ann", "pw1"), ("ben", "pw2")))
    ann, ben = ("ann", "pw1"), ("ben", "pw2")
    task_id = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1), auth=ann).json()["task_id"]
    assert client.get(f"{PREFIX}/task/{task_id}", auth=ben).json() == NOT_FOUND
    assert client.get(f"{PREFIX}/task/{task_id}", auth=ann).json()["success"] is True


def test_without_auth_everyone_sees_every_task(client):
    task_id = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=1)).json()["task_id"]
    other = {"X-Forwarded-For": "10.0.0.9"}
    assert client.get(f"{PREFIX}/task/{task_id}", headers=other).json()["success"] is True

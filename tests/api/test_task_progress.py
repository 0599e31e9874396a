"""A1111's task progress (/internal/progress, /internal/pending-tasks) per job, with jobs queued
behind each other, and the per-job event streams (SSE and WebSocket)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.api.payloads import webuiapi_txt2img

LONG = dict(steps=400, width=64, height=64, seed=5)


def post_in_background(client, payload, path="/sdapi/v1/txt2img"):
    holder = {}

    def run():
        holder["response"] = client.post(path, json=payload)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, holder


def task_progress(client, id_task, **extra):
    response = client.post("/internal/progress", json={"id_task": id_task, **extra})
    assert response.status_code == 200
    return response.json()


def wait_until(fetch, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if predicate(value):
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s; last value: {value}")


def test_unknown_task_is_waiting(client):
    body = task_progress(client, "task(nothing)")
    assert body == {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
                    "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}
    assert client.get("/internal/pending-tasks").json() == {"size": 0, "tasks": []}


def test_internal_progress_with_jobs_queued_behind_a_running_one(client):
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 5, "live_previews_image_format": "jpeg"})
    first = post_in_background(client, webuiapi_txt2img(**LONG, force_task_id="task(first)"))
    running = wait_until(lambda: task_progress(client, "task(first)"),
                         lambda b: b["active"] and b["live_preview"] and b["progress"] > 0)
    second = post_in_background(client, webuiapi_txt2img(steps=2, width=64, height=64, force_task_id="task(second)"))
    wait_until(lambda: client.get("/internal/pending-tasks").json(), lambda b: b["size"] == 1)
    third = post_in_background(client, webuiapi_txt2img(steps=2, width=64, height=64, force_task_id="task(third)"))
    pending = wait_until(lambda: client.get("/internal/pending-tasks").json(), lambda b: b["size"] == 2)
    assert pending == {"size": 2, "tasks": ["task(second)", "task(third)"]}

    assert running["live_preview"].startswith("data:image/jpeg;base64,/9j/") and running["id_live_preview"] >= 1
    assert client.get("/sdapi/v1/progress").json()["current_image"].startswith("iVBOR")  # A1111's /progress: PNG
    assert running["queued"] is False and running["completed"] is False and running["eta"] > 0
    again = task_progress(client, "task(first)", id_live_preview=10**6)  # an id it does not have: the image comes
    assert again["live_preview"] and again["id_live_preview"] >= running["id_live_preview"]
    same = task_progress(client, "task(first)", id_live_preview=again["id_live_preview"])
    assert same["live_preview"] is None or same["id_live_preview"] > again["id_live_preview"]
    assert task_progress(client, "task(first)", live_preview=False)["live_preview"] is None

    second_view = task_progress(client, "task(second)")
    assert second_view == {"active": False, "queued": True, "completed": False, "progress": None, "eta": None,
                           "live_preview": None, "id_live_preview": -1, "textinfo": "In queue: 1/2"}
    assert task_progress(client, "task(third)")["textinfo"] == "In queue: 2/2"

    client.post("/sdapi/v1/interrupt")
    for thread, holder in (first, second, third):
        thread.join(60)
        assert holder["response"].status_code == 200
    for task in ("task(first)", "task(second)", "task(third)"):
        done = task_progress(client, task)
        seen = (done["active"], done["queued"], done["completed"], done["textinfo"])
        assert seen == (False, False, True, "Waiting..."), task
    assert client.get("/internal/pending-tasks").json() == {"size": 0, "tasks": []}


def test_requests_without_force_task_id_get_a1111_task_ids(client):
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 5})
    first = post_in_background(client, webuiapi_txt2img(**LONG))
    wait_until(lambda: client.get("/sdapi/v1/progress").json(), lambda s: s["state"]["sampling_step"] >= 1)
    second = post_in_background(client, webuiapi_txt2img(steps=2, width=64, height=64))
    pending = wait_until(lambda: client.get("/internal/pending-tasks").json(), lambda b: b["size"] == 1)
    assert pending["tasks"][0].startswith("task(txt2img-") and len(pending["tasks"][0]) == len("task(txt2img-ABCDEFG)")
    client.post("/sdapi/v1/interrupt")
    for thread, _ in (first, second):
        thread.join(60)


def read_sse(response):
    """(event, data) pairs of an SSE body, in order."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
    return events


def check_ordered(events, task_id):
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1
    states = [data["state"] for name, data in events if name == "status"]
    assert states[0] == "waiting" and "active" in states
    order = ["waiting", "queued", "active", "completed"]
    assert [order.index(s) for s in states] == sorted(order.index(s) for s in states)
    first_active = next(i for i, (n, d) in enumerate(events) if n == "status" and d["state"] == "active")
    progress = [(i, d) for i, (n, d) in enumerate(events) if n == "progress"]
    assert progress and progress[0][0] > first_active
    steps = [(d["job_no"], d["step"]) for _, d in progress]
    assert steps == sorted(steps)
    assert {d["total"] for _, d in progress} <= {0, 6} and progress[-1][1]["total"] == 6  # 0: started, not sampling yet
    assert all(d["task_id"] == task_id for _, d in events)


def test_sse_stream_of_a_sync_request_ends_with_done(client):
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 2})
    task_id = "task(sse-1)"
    holder = {}

    def listen():
        with client.stream("GET", f"/sdapi/v1/progress/{task_id}/events") as response:
            holder["status"] = response.status_code
            holder["type"] = response.headers["content-type"]
            holder["events"] = read_sse(response)

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.5)  # the stream is open before the job exists: it waits for the id
    result = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(steps=6, width=64, height=64,
                                                                     force_task_id=task_id))
    assert result.status_code == 200
    listener.join(60)
    assert holder["status"] == 200 and holder["type"].startswith("text/event-stream")
    events = holder["events"]
    check_ordered(events, task_id)
    assert any(d["live_preview"] for n, d in events if n == "progress")
    assert events[-1][1] == {"task_id": task_id, "status": "completed", "error": None,
                             "result": {"images": 1, "urls": None}}


def test_websocket_stream_of_a_sync_request_ends_with_done(client):
    task_id = "task(ws-1)"
    with client.websocket_connect(f"/sdapi/v1/progress/{task_id}/ws?previews=false") as ws:
        payload = webuiapi_txt2img(steps=6, width=64, height=64, force_task_id=task_id)
        thread, holder = post_in_background(client, payload)
        events = []
        while not events or events[-1][0] != "done":
            message = ws.receive_json()
            events.append((message["event"], message["data"]))
    thread.join(60)
    assert holder["response"].status_code == 200
    check_ordered(events, task_id)
    assert all(d["live_preview"] is None for n, d in events if n == "progress")
    assert events[-1][1]["status"] == "completed"


def test_failed_request_ends_its_stream_with_the_error(client):
    task_id = "task(bad)"
    with client.websocket_connect(f"/sdapi/v1/progress/{task_id}/ws") as ws:
        response = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(
            steps=2, width=64, height=64, force_task_id=task_id, script_name="no such script"))
        assert response.status_code == 422
        events = []
        while not events or events[-1]["event"] != "done":
            events.append(ws.receive_json())
    assert events[-1]["data"]["status"] == "failed" and events[-1]["data"]["error"]


def test_stream_of_an_async_task_points_at_its_results(client):
    queued = client.post("/agent-scheduler/v1/queue/txt2img", json=webuiapi_txt2img(steps=4, width=64, height=64))
    task_id = queued.json()["task_id"]
    with client.stream("GET", f"/sdapi/v1/progress/{task_id}/events") as response:
        events = read_sse(response)
    assert events[-1][0] == "done"
    done = events[-1][1]
    assert done["status"] == "completed" and done["result"]["images"] == 1
    assert client.get(done["result"]["href"]).json()["success"] is True
    assert task_progress(client, task_id)["completed"] is True


def test_stream_of_a_task_that_never_comes_ends_as_unknown(client):
    with client.stream("GET", "/sdapi/v1/progress/task(never)/events?wait=0.2") as response:
        assert "content-encoding" not in response.headers  # never gzip-buffered
        events = read_sse(response)
    assert [name for name, _ in events] == ["status", "done"]
    assert events[-1][1]["status"] == "unknown"


@pytest.fixture()
def auth_client(make_client):
    return make_client(api_auth=(("user", "secret"),))


def test_progress_routes_and_websocket_need_the_api_auth(auth_client):
    from starlette.websockets import WebSocketDisconnect

    assert auth_client.post("/internal/progress", json={"id_task": "x"}).status_code == 401
    assert auth_client.get("/internal/pending-tasks").status_code == 401
    assert auth_client.get("/sdapi/v1/progress/x/events").status_code == 401
    with pytest.raises(WebSocketDisconnect) as refused:
        with auth_client.websocket_connect("/sdapi/v1/progress/x/ws") as ws:
            ws.receive_json()
    assert refused.value.code == 1008
    auth = ("user", "secret")
    assert auth_client.post("/internal/progress", json={"id_task": "x"}, auth=auth).status_code == 200
    import base64

    header = {"Authorization": "Basic " + base64.b64encode(b"user:secret").decode()}
    with auth_client.websocket_connect("/sdapi/v1/progress/x/ws?wait=0", headers=header) as ws:
        assert ws.receive_json()["event"] == "status"
        assert ws.receive_json()["data"]["status"] == "unknown"


def test_img2img_carries_its_force_task_id(client):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(buffer, format="PNG")
    payload = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "steps": 2, "width": 64, "height": 64,
               "force_task_id": "task(i2i)", "denoising_strength": 0.5}
    with client.stream("GET", "/sdapi/v1/progress/task(i2i)/events?previews=false") as response:
        thread, holder = post_in_background(client, payload, "/sdapi/v1/img2img")
        events = read_sse(response)
    thread.join(60)
    assert holder["response"].status_code == 200
    assert events[-1] == ("done", {"task_id": "task(i2i)", "status": "completed", "error": None,
                                   "result": {"images": 1, "urls": None}})
    assert "active" in [data["state"] for name, data in events if name == "status"]
    assert task_progress(client, "task(i2i)")["completed"] is True


def test_with_api_keys_a_caller_sees_only_its_own_jobs(make_client, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "alice", "key": "alice-secret-key-0001"},
                                         {"name": "bob", "key": "bob-secret-key-000002"}]}))
    client = make_client(api_keys_file=keys)
    alice = {"Authorization": "Bearer alice-secret-key-0001"}
    bob = {"Authorization": "Bearer bob-secret-key-000002"}
    holder = {}

    def run():
        holder["response"] = client.post("/sdapi/v1/txt2img", headers=alice,
                                         json=webuiapi_txt2img(**LONG, force_task_id="task(alice)"))

    thread = threading.Thread(target=run)
    thread.start()
    mine = wait_until(lambda: client.post("/internal/progress", json={"id_task": "task(alice)"}, headers=alice).json(),
                      lambda b: b["active"])
    assert mine["active"] is True
    theirs = client.post("/internal/progress", json={"id_task": "task(alice)"}, headers=bob).json()
    assert (theirs["active"], theirs["live_preview"], theirs["textinfo"]) == (False, None, "Waiting...")
    with client.stream("GET", "/sdapi/v1/progress/task(alice)/events?wait=0.3", headers=bob) as response:
        events = read_sse(response)
    assert [data.get("state", data.get("status")) for _, data in events] == ["waiting", "unknown"]
    client.post("/sdapi/v1/interrupt", headers=alice)
    thread.join(60)
    assert holder["response"].status_code == 200

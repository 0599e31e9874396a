"""Async tasks at agent-scheduler's routes: queue, poll, results, listing, delete."""

from __future__ import annotations

import base64
import time

from tests.api.payloads import webuiapi_txt2img
from tests.test_scheduler_guards import hold_worker

PREFIX = "/agent-scheduler/v1"


def wait_for_status(client, task_id, wanted=("done", "failed", "interrupted"), timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"{PREFIX}/task/{task_id}").json()["data"]
        if data["status"] in wanted:
            return data
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} still {data['status']} after {timeout}s")


def test_a_queued_task_gives_the_same_images_as_a_synchronous_request(client):
    payload = webuiapi_txt2img(seed=777, batch_size=2, steps=3)
    task_id = client.post(f"{PREFIX}/queue/txt2img", json={**payload, "callback_url": None}).json()["task_id"]
    task = wait_for_status(client, task_id)
    assert task["status"] == "done" and task["type"] == "txt2img" and task["params"]["seed"] == 777
    results = client.get(f"{PREFIX}/task/{task_id}/results").json()
    assert results["success"] is True and len(results["data"]) == 2
    sync = client.post("/sdapi/v1/txt2img", json=payload).json()
    for entry, image in zip(results["data"], sync["images"], strict=True):
        assert entry["image"] == f"data:image/png;base64,{image}"
        assert base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n"
    assert [entry["infotext"] for entry in results["data"]] == __import__("json").loads(sync["info"])["infotexts"]


def test_results_as_zip_and_the_old_results_route(client):
    task_id = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=2)).json()["task_id"]
    wait_for_status(client, task_id)
    archive = client.get(f"{PREFIX}/results/{task_id}", params={"zip": "true"})
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    assert archive.content[:2] == b"PK"


def test_unknown_task_is_success_false_with_http_200(client):
    for path in ("/task/nope", "/task/nope/position", "/task/nope/results"):
        response = client.get(PREFIX + path)
        assert response.status_code == 200 and response.json() == {"success": False, "message": "Task not found"}
    assert client.delete(f"{PREFIX}/task/nope").json()["success"] is False


def test_queue_listing_positions_and_deleting_a_pending_task(client):
    blocker = hold_worker(client.app.state.runtime.scheduler)  # keeps the first task from finishing
    ids = [
        client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(seed=i, steps=2)).json()["task_id"]
        for i in range(3)
    ]
    try:
        wait_for_status(client, ids[0], wanted=("running",))
        queue = client.get(f"{PREFIX}/queue").json()
        assert queue["current_task_id"] == ids[0] and queue["total_pending_tasks"] == 2 and queue["paused"] is False
        assert [(t["id"], t["position"]) for t in queue["pending_tasks"]] == [(ids[1], 0), (ids[2], 1)]
        assert client.get(f"{PREFIX}/task/{ids[2]}/position").json()["data"] == {"status": "pending", "position": 1}
        assert client.get(f"{PREFIX}/task/{ids[1]}/results").json() == {"success": False, "message": "Task is pending"}
        assert client.delete(f"{PREFIX}/task/{ids[1]}").json() == {"success": True, "message": "Task deleted"}
    finally:
        blocker.release.set()
    assert wait_for_status(client, ids[2])["status"] == "done"
    assert wait_for_status(client, ids[0])["status"] == "done"
    assert client.get(f"{PREFIX}/task/{ids[1]}").json()["success"] is False


def test_deleting_the_running_task_interrupts_it_and_the_next_one_runs(client):
    blocker = hold_worker(client.app.state.runtime.scheduler)  # the task waits in the device queue
    first = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=2)).json()["task_id"]
    second = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(steps=2)).json()["task_id"]
    wait_for_status(client, first, wanted=("running",))
    assert client.delete(f"{PREFIX}/task/{first}").json() == {"success": True, "message": "Task interrupted"}
    blocker.release.set()
    assert wait_for_status(client, first)["status"] == "interrupted"
    assert wait_for_status(client, second)["status"] == "done"


def test_checkpoint_and_vae_fields_become_override_settings(client):
    body = webuiapi_txt2img(steps=2, checkpoint="no-such-model", vae="Automatic")
    task_id = client.post(f"{PREFIX}/queue/txt2img", json=body).json()["task_id"]
    task = wait_for_status(client, task_id)
    assert task["params"]["override_settings"]["sd_model_checkpoint"] == "no-such-model"
    assert task["params"]["override_settings"]["sd_vae"] == "Automatic"
    # A1111's process_images drops an override naming no checkpoint: the task runs on the selected one
    assert task["status"] == "done", task


def test_bad_bodies_are_refused_before_queueing(client):
    assert client.post(f"{PREFIX}/queue/txt2img", json={"steps": "many"}).status_code == 422
    assert client.get(f"{PREFIX}/queue").json()["total_pending_tasks"] == 0


class CallbackSink:
    """A local HTTP server that records the multipart callbacks it receives."""

    def __init__(self, fail_first: int = 0) -> None:
        import http.server
        import threading

        self.received: list[tuple[str, bytes]] = []
        self.fail_first = fail_first
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if sink.fail_first > 0:
                    sink.fail_first -= 1
                    self.send_response(500)
                else:
                    sink.received.append((self.headers["Content-Type"], body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                return

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def parts(self, timeout=30.0):
        import email.parser

        deadline = time.monotonic() + timeout
        while not self.received:
            assert time.monotonic() < deadline, "no callback arrived"
            time.sleep(0.05)
        content_type, body = self.received[0]
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        return [
            (part.get_param("name", header="content-disposition"), part.get_filename(), part.get_payload(decode=True))
            for part in message.get_payload()
        ]

    def close(self):
        self.server.shutdown()


def test_callback_url_receives_the_images_as_multipart(make_client):
    client = make_client(callback_allow=("127.0.0.1",))  # loopback targets only when the operator allows them
    sink = CallbackSink(fail_first=1)  # the first try fails: the callback is retried
    try:
        body = webuiapi_txt2img(steps=2, seed=9, callback_url=sink.url)
        task_id = client.post(f"{PREFIX}/queue/txt2img", json=body).json()["task_id"]
        assert wait_for_status(client, task_id)["api_task_callback"] == sink.url
        parts = sink.parts()
    finally:
        sink.close()
    assert parts[0] == ("task_id", None, task_id.encode()) and parts[1] == ("status", None, b"done")
    name, filename, content = parts[2]
    results = client.get(f"{PREFIX}/task/{task_id}/results").json()["data"]
    assert name == "files" and filename == f"{task_id}-0.png"
    assert base64.b64encode(content).decode() == results[0]["image"].partition(",")[2]


def test_a_callback_url_that_is_not_http_is_refused(make_client):
    client = make_client(callback_allow=("public",))
    response = client.post(f"{PREFIX}/queue/txt2img", json=webuiapi_txt2img(callback_url="file:///etc/passwd"))
    assert response.status_code == 400 and "callback_url must be an http" in response.json()["detail"]

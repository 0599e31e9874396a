"""Queue guards: depth limit (503 + Retry-After), queue timeout, dropped jobs of gone clients."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.factories import settings_for_tests
from webui_api.progress import ProgressTracker
from webui_api.scheduler import ClientGone, QueueFull, QueueTimeout, Scheduler, WorkItem


class Blocker:
    """A work item that holds the worker until released, so later items stay queued."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.item = WorkItem(run=self._run, label="blocker")

    def _run(self, _cancel) -> str:
        self.started.set()
        assert self.release.wait(30), "the test never released the blocker"
        return "blocker done"


def recording_item(ran: list[str], name: str) -> WorkItem:
    return WorkItem(run=lambda _cancel: ran.append(name) or name, label=name)


@pytest.fixture()
def scheduler_factory():
    made = []

    def make(**kwargs) -> Scheduler:
        scheduler = Scheduler(ProgressTracker(encode_preview=lambda image: ""), **kwargs)
        scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop(timeout=5)


def hold_worker(scheduler: Scheduler) -> Blocker:
    blocker = Blocker()
    scheduler.submit(blocker.item)
    assert blocker.started.wait(10)
    return blocker


def test_guarded_submissions_beyond_the_depth_are_refused_with_retry_after(scheduler_factory):
    scheduler = scheduler_factory(max_queue_depth=2)
    blocker = hold_worker(scheduler)
    ran: list[str] = []
    first = scheduler.submit(recording_item(ran, "a"), guarded=True)
    second = scheduler.submit(recording_item(ran, "b"), guarded=True)
    with pytest.raises(QueueFull) as refused:
        scheduler.submit(recording_item(ran, "c"), guarded=True)
    assert refused.value.status_code == 503 and int(refused.value.headers["Retry-After"]) >= 1
    assert "--max-queue-depth 2" in refused.value.detail
    scheduler.submit(recording_item(ran, "internal"))  # unguarded work (model loads) is never refused
    blocker.release.set()
    assert first.result(10) == "a" and second.result(10) == "b"
    assert scheduler.waiting_generations == 0
    assert scheduler.submit(recording_item(ran, "d"), guarded=True).result(10) == "d"  # room again


def test_a_job_queued_past_the_timeout_is_refused_and_never_runs(scheduler_factory):
    scheduler = scheduler_factory(queue_timeout=0.3)
    blocker = hold_worker(scheduler)
    ran: list[str] = []
    started = time.monotonic()
    with pytest.raises(QueueTimeout, match="--queue-timeout"):
        asyncio.run(scheduler.run(recording_item(ran, "late"), guarded=True))
    assert 0.3 <= time.monotonic() - started < 5
    blocker.release.set()
    assert scheduler.submit(recording_item(ran, "after"), guarded=True).result(10) == "after"
    assert ran == ["after"]  # the timed-out job was skipped, not run late
    assert scheduler.waiting_generations == 0


def test_the_timeout_never_cuts_a_running_job(scheduler_factory):
    scheduler = scheduler_factory(queue_timeout=0.2)
    slow = WorkItem(run=lambda _cancel: time.sleep(0.8) or "slow done", label="slow")
    assert asyncio.run(scheduler.run(slow, guarded=True)) == "slow done"


def test_a_queued_job_of_a_disconnected_client_is_dropped(scheduler_factory):
    scheduler = scheduler_factory()
    blocker = hold_worker(scheduler)
    ran: list[str] = []

    async def gone() -> bool:
        return True

    with pytest.raises(ClientGone):
        asyncio.run(scheduler.run(recording_item(ran, "orphan"), guarded=True, disconnected=gone))
    blocker.release.set()
    assert scheduler.submit(recording_item(ran, "next")).result(10) == "next"
    assert ran == ["next"]


def test_cancelling_the_awaiting_task_drops_the_queued_job(scheduler_factory):
    scheduler = scheduler_factory()
    blocker = hold_worker(scheduler)
    ran: list[str] = []

    async def give_up_waiting() -> None:
        waiter = asyncio.ensure_future(scheduler.run(recording_item(ran, "abandoned"), guarded=True))
        await asyncio.sleep(0.1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(give_up_waiting())
    blocker.release.set()
    assert scheduler.submit(recording_item(ran, "next")).result(10) == "next"
    assert ran == ["next"]


def test_async_items_are_not_subject_to_depth_or_timeout(scheduler_factory):
    scheduler = scheduler_factory(max_queue_depth=1, queue_timeout=0.1)
    blocker = hold_worker(scheduler)
    scheduler.submit(WorkItem(run=lambda _c: "sync", label="sync"), guarded=True)
    ran: list[str] = []
    threading.Timer(0.5, blocker.release.set).start()
    assert asyncio.run(scheduler.run(recording_item(ran, "task"))) == "task"


def test_bad_limits_are_refused_loudly():
    with pytest.raises(ValueError, match="max_queue_depth"):
        Scheduler(ProgressTracker(encode_preview=lambda image: ""), max_queue_depth=0)


# through HTTP --------------------------------------------------------------------------------


def post_in_background(client, payload):
    holder = {}
    thread = threading.Thread(target=lambda: holder.update(response=client.post("/sdapi/v1/txt2img", json=payload)))
    thread.start()
    return thread, holder


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_txt2img_beyond_the_queue_depth_gets_503_with_retry_after(make_client):
    from tests.api.payloads import webuiapi_txt2img

    client = make_client(max_queue_depth=1)
    scheduler = client.app.state.runtime.scheduler
    blocker = hold_worker(scheduler)
    thread, holder = post_in_background(client, webuiapi_txt2img())
    wait_until(lambda: scheduler.waiting_generations == 1)
    refused = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img())
    blocker.release.set()
    thread.join(60)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    body = refused.json()
    assert set(body) == {"error", "detail", "body", "errors"} and "queue is full" in body["detail"]
    assert holder["response"].status_code == 200 and len(holder["response"].json()["images"]) == 1


def test_txt2img_queued_too_long_gets_503_and_does_not_run(make_client):
    from tests.api.payloads import webuiapi_txt2img

    client = make_client(queue_timeout=0.3)
    blocker = hold_worker(client.app.state.runtime.scheduler)
    refused = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img())
    blocker.release.set()
    assert refused.status_code == 503 and "did not run" in refused.json()["detail"]
    assert client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img()).status_code == 200


def test_flags_set_the_limits_and_refuse_nonsense(tmp_path):
    from webui_api.cli import parse_args

    settings, _ = parse_args(["--data-dir", str(tmp_path), "--max-queue-depth", "3", "--queue-timeout", "7.5"], {})
    assert settings.max_queue_depth == 3 and settings.queue_timeout == 7.5
    defaults, _ = parse_args(["--data-dir", str(tmp_path)], {"COMMANDLINE_ARGS": "--max-queue-depth 5"})
    assert defaults.max_queue_depth == 5 and defaults.queue_timeout == 600.0
    with pytest.raises(ValueError, match="--max-queue-depth must be at least 1, got 0"):
        parse_args(["--data-dir", str(tmp_path), "--max-queue-depth", "0"], {})


def test_a_real_client_that_hangs_up_while_queued_has_its_job_dropped(engine, tmp_path):
    """Through uvicorn and a raw socket: TestClient cannot disconnect, a real client can."""
    import json
    import socket

    import uvicorn

    from tests.api.payloads import webuiapi_txt2img
    from tests.test_launch import free_port
    from webui_api.app import create_app

    app = create_app(settings_for_tests(tmp_path), engine=engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started)
        scheduler = app.state.runtime.scheduler
        blocker = hold_worker(scheduler)
        body = json.dumps(webuiapi_txt2img()).encode()
        head = (
            "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head.encode() + body)
            wait_until(lambda: scheduler.waiting_generations == 1)
        wait_until(lambda: scheduler.waiting_generations == 0)  # dropped while the worker is still busy
        assert not blocker.item.future.done()
        blocker.release.set()
        wait_until(lambda: scheduler.pending == 0 and scheduler.waiting_generations == 0)
    finally:
        server.should_exit = True
        thread.join(30)

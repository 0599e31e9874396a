"""Async tasks survive a SIGKILL: the real server in a subprocess, killed with work queued and
running, then started again on the same data dir; every task completes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

from tests.api.payloads import webuiapi_txt2img
from tests.test_launch import ROOT, free_port, get_json, wait_until_serving

TASKS = 3
STEPS = 60  # long enough (~1 s on the tiny model) that the kill lands while the first task runs


def start_server(data_dir, port, log_name):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COMMANDLINE_ARGS": ""}
    command = [sys.executable, "launch.py", "--nowebui", "--port", str(port), "--data-dir", str(data_dir)]
    with (data_dir / log_name).open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_until_serving(f"http://127.0.0.1:{port}/agent-scheduler/v1/queue", process)
    return process


def post_json(url, payload):
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def statuses_on_disk(data_dir):
    with sqlite3.connect(data_dir / "tasks" / "tasks.sqlite3") as db:
        return dict(db.execute("SELECT id, status FROM tasks").fetchall())


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_tasks_queued_and_running_at_a_sigkill_all_complete_after_restart(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/agent-scheduler/v1"
    first = start_server(tmp_path, port, "first.log")
    try:
        ids = [
            post_json(f"{api}/queue/txt2img", webuiapi_txt2img(seed=i, steps=STEPS))["task_id"] for i in range(TASKS)
        ]
        wait_for(lambda: get_json(f"{api}/task/{ids[0]}")["data"]["status"] == "running", 60, "the first task starting")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    before = statuses_on_disk(tmp_path)
    assert set(before) == set(ids) and "running" in before.values() and "pending" in before.values(), before

    second = start_server(tmp_path, port, "second.log")
    try:
        def all_finished():
            found = [get_json(f"{api}/task/{task_id}")["data"]["status"] for task_id in ids]
            return found if all(status in ("done", "failed", "interrupted") for status in found) else None

        assert wait_for(all_finished, 120, "every task finishing") == ["done"] * TASKS
        for task_id in ids:
            results = get_json(f"{api}/task/{task_id}/results")
            assert results["success"] and results["data"][0]["image"].startswith("data:image/png;base64,")
        assert "re-queued" in (tmp_path / "second.log").read_text()
    finally:
        stop(second)

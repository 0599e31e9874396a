"""The run command itself: launch.py on a fresh data dir, no checkpoint, real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        try:
            get_json(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not start in time")


def test_importing_the_package_and_app_has_no_side_effects():
    code = (
        "import sys, webui_api, webui_api.app, webui_api.job_builder, webui_api.schemas.generation;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_launch_serves_the_embedded_model_and_says_it_is_noise(tmp_path):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COMMANDLINE_ARGS": ""}
    command = [sys.executable, "launch.py", "--nowebui", "--port", str(port), "--data-dir", str(tmp_path),
               "--api-server-stop", "--xformers", "--made-up-extension-flag"]
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/sdapi/v1"
    try:
        wait_until_serving(f"{base}/sd-models", process)
        models = get_json(f"{base}/sd-models")
        assert "random" in models[0]["title"]
        deadline = time.monotonic() + 60
        while get_json(f"{base}/options")["sd_model_checkpoint"] != models[0]["title"]:
            assert time.monotonic() < deadline, "model never loaded"
            time.sleep(0.2)
        request = urllib.request.Request(f"{base}/server-stop", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.read() == b"Stopping."
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text()
    assert "EMBEDDED TINY MODEL" in log and "noise" in log
    assert "--made-up-extension-flag" in log  # unknown flags (pasted COMMANDLINE_ARGS) are accepted with a warning

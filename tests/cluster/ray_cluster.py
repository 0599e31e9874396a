"""A local Ray cluster for the scale-out tests: one per test module (Ray starts take seconds).

Ray's temp dir (unix sockets: a short path) and HOME go into throwaway folders, worker processes
keep normal priority (RAY_worker_niceness=0) and nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.factories import settings_for_tests
from webui_api.settings import Settings
from webui_api.workers import RayOptions

START_TIMEOUT = 120.0
REPO_ROOT = Path(__file__).resolve().parents[2]  # replicas import this checkout's webui_api


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def ray_env(home: Path) -> Iterator[str]:
    """Environment for a test cluster; yields the short temp dir."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    saved = {name: os.environ.get(name) for name in ("RAY_worker_niceness", "HOME", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update({"RAY_worker_niceness": "0", "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        yield temp_dir
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def serve_cluster(
    data_dir: Path, home: Path, workers: int = 2, ingress_replicas: int = 1, **settings_overrides: Any
) -> Iterator[tuple[str, Settings]]:
    """Start Ray (local, CPU), run the webui-api application, yield (base URL, settings)."""
    import ray
    from ray import serve

    from webui_api.cluster.launch import run_application, start_ray

    port = free_port()
    options = RayOptions(workers=workers, gpus_per_worker=0.0, cpus_per_worker=1.0, cpus_per_ingress=0.5,
                         ingress_replicas=ingress_replicas)
    settings = settings_for_tests(data_dir, device="cpu", dtype="float32", host="127.0.0.1", port=port, ray=options,
                                  **settings_overrides)
    with ray_env(home) as temp_dir:
        start_ray(settings, num_cpus=workers + 1 + ingress_replicas, include_dashboard=False, _temp_dir=temp_dir,
                  runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                            "TOKENIZERS_PARALLELISM": "false", "RAY_worker_niceness": "0",
                                            "PYTHONPATH": str(REPO_ROOT)}},
                  log_to_driver=False)
        try:
            try:
                run_application(settings)
            except RuntimeError:
                print(serve.status())  # the replicas' start-up errors, into the test's output
                raise
            base = f"http://127.0.0.1:{port}"
            wait_ready(base)
            yield base, settings
        finally:
            serve.shutdown()
            ray.shutdown()


def wait_ready(base: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/sdapi/v1/progress", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Ray Serve application did not answer within {timeout} s")


def board() -> Any:
    from webui_api.cluster.board import board_handle

    return board_handle()

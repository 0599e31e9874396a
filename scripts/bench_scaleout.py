"""Scale-out on Ray Serve: txt2img throughput with 1 vs 2 CPU worker replicas, in one run.

Starts a local Ray instance (CPU only), deploys the `--ray` application with one worker
replica, sends `--requests` txt2img requests from `--clients` concurrent clients, then
redeploys with two replicas and sends the same load. The embedded tiny model (random weights)
is used, so the numbers measure the serving path and the parallelism, not a real checkpoint.
Each replica runs torch with `--threads` intra-op threads; on a machine with fewer free cores
than replicas x threads the ratio says more about the machine than about the design.

Usage: python scripts/bench_scaleout.py [--requests 16 --clients 4 --steps 20 --size 64 --threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="requests per configuration")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="width and height")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica (OMP_NUM_THREADS)")
    parser.add_argument("--workers", default="1,2", help="replica counts to compare, first is the baseline")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(base: str, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/sdapi/v1/progress", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the application did not come up")


def load(base: str, requests: int, clients: int, body: dict) -> tuple[float, list[float]]:
    """Wall time for `requests` requests over `clients` threads, and each request's latency."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            for n in counter:
                started = time.perf_counter()
                response = http.post(f"{base}/sdapi/v1/txt2img", json={**body, "seed": 1000 + n})
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


def deploy(settings, workers: int, base: str, body: dict, warm: int) -> None:
    """(Re)deploy with `workers` replicas and warm every replica (torch, model load)."""
    from webui_api.cluster.launch import run_application

    run_application(dataclasses.replace(settings, ray=dataclasses.replace(settings.ray, workers=workers)))
    wait_ready(base)
    load(base, warm, warm, {**body, "steps": 2})


def main() -> None:
    args = parse_args()
    import ray
    from ray import serve

    from webui_api.cluster.launch import start_ray
    from webui_api.settings import Settings
    from webui_api.workers import RayOptions

    counts = [int(n) for n in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="scaleout"))
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # unix socket paths must stay short
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    options = RayOptions(workers=counts[0], cpus_per_worker=1.0, cpus_per_ingress=0.5)
    settings = dataclasses.replace(Settings.layout(root), device="cpu", dtype="float32", host="127.0.0.1", port=port,
                                   ray=options)
    threads = str(args.threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
           "RAY_worker_niceness": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    body = {"prompt": "a lighthouse at dusk", "steps": args.steps, "width": args.size, "height": args.size,
            "sampler_name": "Euler"}
    print(f"host: {platform.node()} ({os.cpu_count()} cores visible), torch threads per replica: {threads}")
    print(f"load: {args.requests} txt2img requests, {args.clients} concurrent clients, {args.size}x{args.size}, "
          f"{args.steps} steps, embedded tiny model")
    results: dict[int, float] = {}
    try:
        start_ray(settings, num_cpus=max(counts) + 2, include_dashboard=False, _temp_dir=temp_dir,
                  runtime_env={"env_vars": env}, log_to_driver=False)
        for workers in counts:
            deploy(settings, workers, base, body, warm=2 * workers)
            wall, latencies = load(base, args.requests, args.clients, body)
            results[workers] = args.requests / wall
            print(f"{workers} replica(s): {results[workers]:.2f} images/s, wall {wall:.1f} s, "
                  f"p50 latency {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    baseline = results[counts[0]]
    for workers in counts[1:]:
        print(f"ratio {workers} vs {counts[0]} replica(s): {results[workers] / baseline:.2f}x")


if __name__ == "__main__":
    main()

"""HTTP end-to-end time vs in-process engine time for the same txt2img request.

Both paths share one engine (and so one model) in this process. The in-process path runs
the engine on a job built exactly as the route builds it; the HTTP path POSTs the same
payload to a real uvicorn server on loopback and includes JSON parsing, queueing, PNG
encoding, base64 and the transfer. The printed ratio (HTTP / engine) is the API's overhead;
the goal is <= 1.05 for a realistic request.

Usage: python scripts/bench_http_overhead.py [--width 512 --height 512 --steps 20 --repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def payload(args: argparse.Namespace) -> dict:
    return {"prompt": "a photo of a cat", "negative_prompt": "blurry", "seed": 1234, "steps": args.steps,
            "width": args.width, "height": args.height, "sampler_name": args.sampler}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


def time_engine(runtime, body: dict, repeats: int) -> list[float]:
    """The work the worker thread does for this request, called directly."""
    from webui_api.job_builder import build_txt2img
    from webui_api.progress import CancelToken
    from webui_api.schemas.generation import Txt2ImgRequest

    request = Txt2ImgRequest.model_validate(body)
    times = []
    for _ in range(repeats):
        job = build_txt2img(request, runtime.options.snapshot())
        started = time.perf_counter()
        runtime.engine.txt2img(job, runtime.progress, CancelToken())
        times.append(time.perf_counter() - started)
    return times


def time_http(port: int, body: dict, repeats: int) -> list[float]:
    import httpx

    times = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.post("/sdapi/v1/txt2img", json=body)
            times.append(time.perf_counter() - started)
            response.raise_for_status()
    return times


def main() -> None:
    args = parse_args()
    from dataclasses import replace

    from webui_api.app import build_runtime, create_app
    from webui_api.engine.facade import Engine
    from webui_api.settings import Settings

    engine = Engine(device=args.device, dtype="auto")
    engine.load()
    data_dir = Path(tempfile.mkdtemp())
    port = free_port()
    settings = replace(Settings.layout(data_dir), port=port)
    server, thread = start_server(create_app(settings, engine=engine), port)
    body = payload(args)
    time_http(port, body, 1)  # warm-up: first-call allocations, lazy imports
    runtime = build_runtime(settings, engine)
    engine_times, http_times = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both paths alike
        engine_times += time_engine(runtime, body, 1)
        http_times += time_http(port, body, 1)
    server.should_exit = True
    thread.join(30)
    report(args, engine_times, http_times)


def report(args: argparse.Namespace, engine_times: list[float], http_times: list[float]) -> None:
    engine_median = statistics.median(engine_times)
    http_median = statistics.median(http_times)
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} device={args.device}")
    print(f"request: {args.width}x{args.height}, {args.steps} steps, {args.sampler}, repeats={args.repeats}")
    print(
        f"engine (in-process) median: {engine_median * 1000:.1f} ms   runs: {[round(t * 1000) for t in engine_times]}"
    )
    print(f"HTTP end-to-end     median: {http_median * 1000:.1f} ms   runs: {[round(t * 1000) for t in http_times]}")
    print(f"overhead median: {(http_median - engine_median) * 1000:.1f} ms")
    print(f"ratio HTTP / engine: {http_median / engine_median:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()

"""Soak test: N concurrent clients x M requests each against a real server on loopback.

Starts the server as a child process (`launch.py`, the embedded tiny model unless --ckpt is
passed through), warms it up, then runs the clients and prints: requests, failures (any
answer but 200, or a transport error), latency p50/p99, throughput, and the server's resident
memory (RSS) after warm-up, at its peak, and at the end, with the growth in percent.
Exits 1 when a request failed or RSS grew by more than --max-rss-growth percent.

    PYTHONPATH=. python scripts/soak.py --clients 32 --requests 500
    PYTHONPATH=. python scripts/soak.py --clients 4 --requests 20 --json soak.json

Not a timed test: the numbers depend on the machine. Linux only (RSS from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=500, help="requests per client")
    parser.add_argument("--warmup", type=int, default=20, help="requests before RSS is first read")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="percent; more is a failure")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("server_args", nargs="*", help="extra flags for the server (after --)")
    return parser.parse_args()


@dataclass
class Summary:
    clients: int
    requests_per_client: int
    requests: int = 0
    failures: int = 0
    failure_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests_per_second: float = 0.0
    rss_after_warmup_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth_percent: float = 0.0
    machine: str = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_server(port: int, data_dir: Path, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "launch.py"), "--nowebui", "--port", str(port), "--data-dir", str(data_dir),
               "--result-cache-size", "0", "--audit-log", "off", "--max-queue-depth", "1024", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(base_url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def body(args: argparse.Namespace, seed: int) -> dict:
    return {"prompt": "a photo of a cat", "negative_prompt": "blurry", "seed": seed, "steps": args.steps,
            "width": args.width, "height": args.height, "sampler_name": "Euler a"}


async def client(index: int, args: argparse.Namespace, base_url: str, latencies: list[float], summary: Summary) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=900) as http:
        for number in range(args.requests):
            started = time.perf_counter()
            try:
                response = await http.post("/sdapi/v1/txt2img", json=body(args, index * 1_000_000 + number))
                ok = response.status_code == 200 and len(response.json().get("images") or []) == 1
                problem = None if ok else f"{response.status_code} {response.text[:200]}"
            except (httpx.HTTPError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            latencies.append(time.perf_counter() - started)
            summary.requests += 1
            if problem is not None:
                summary.failures += 1
                if len(summary.failure_examples) < 5:
                    summary.failure_examples.append(problem)


async def watch_rss(pid: int, summary: Summary, stop: asyncio.Event) -> None:
    while not stop.is_set():
        summary.rss_peak_mb = max(summary.rss_peak_mb, rss_mb(pid))
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            pass


async def soak(args: argparse.Namespace, base_url: str, pid: int) -> Summary:
    import httpx

    summary = Summary(args.clients, args.requests, machine=machine_line())
    async with httpx.AsyncClient(base_url=base_url, timeout=900) as http:
        for number in range(args.warmup):
            (await http.post("/sdapi/v1/txt2img", json=body(args, 10**9 + number))).raise_for_status()
    summary.rss_after_warmup_mb = summary.rss_peak_mb = rss_mb(pid)
    latencies: list[float] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_rss(pid, summary, stop))
    started = time.perf_counter()
    await asyncio.gather(*(client(i, args, base_url, latencies, summary) for i in range(args.clients)))
    summary.seconds = time.perf_counter() - started
    stop.set()
    await watcher
    summary.rss_end_mb = rss_mb(pid)
    summary.rss_peak_mb = max(summary.rss_peak_mb, summary.rss_end_mb)
    summary.rss_growth_percent = 100.0 * (summary.rss_end_mb / summary.rss_after_warmup_mb - 1.0)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    summary.p50_ms, summary.p99_ms = 1000 * statistics.median(latencies), 1000 * cuts[98]
    summary.requests_per_second = summary.requests / summary.seconds
    return summary


def machine_line() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}")


def report(summary: Summary, args: argparse.Namespace) -> None:
    print(f"{summary.clients} clients x {summary.requests_per_client} requests "
          f"({args.width}x{args.height}, {args.steps} steps) on {summary.machine}")
    print(f"requests {summary.requests}, failures {summary.failures}, {summary.seconds:.1f} s, "
          f"{summary.requests_per_second:.2f} req/s")
    print(f"latency p50 {summary.p50_ms:.0f} ms, p99 {summary.p99_ms:.0f} ms")
    print(f"server RSS after warm-up {summary.rss_after_warmup_mb:.0f} MB, peak {summary.rss_peak_mb:.0f} MB, "
          f"end {summary.rss_end_mb:.0f} MB, growth {summary.rss_growth_percent:+.1f} %")
    for example in summary.failure_examples:
        print(f"  failure: {example}")


def main() -> int:
    args = parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="soak-") as data_dir:
        process = start_server(port, Path(data_dir), args.server_args)
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_ready(base_url, process)
            summary = asyncio.run(soak(args, base_url, process.pid))
        finally:
            process.terminate()
            process.wait(60)
    report(summary, args)
    if args.json:
        args.json.write_text(json.dumps(asdict(summary), indent=2))
    return 1 if summary.failures or summary.rss_growth_percent > args.max_rss_growth else 0


if __name__ == "__main__":
    sys.exit(main())

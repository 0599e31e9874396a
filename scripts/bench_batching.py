"""Cross-request batching: throughput and latency of concurrent txt2img clients, batching off vs on.

One engine (one model) in this process serves several apps on loopback uvicorn servers that
differ only in --batch-max-size. In each round, every mode in turn gets one wave: `--clients`
concurrent clients each POST one txt2img request (different prompts and seeds, same batch
key). Interleaving the modes round by round spreads drift in machine load over all of them.
Printed per mode: images/s (images over the summed wave times), p50 / p99 request latency,
the batch sizes the scheduler formed, and the ratios against the first mode (batching off).

Usage: python scripts/bench_batching.py [--clients 8 --rounds 3 --width 256 --height 256 --steps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="waves per mode, interleaved between modes")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--sizes", default="1,4,8", help="--batch-max-size values to compare; 1 (off) first")
    parser.add_argument("--wait-ms", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe", action="store_true", help="only print which UNet row counts agree bit for bit")
    return parser.parse_args()


@dataclass
class ModeResult:
    max_size: int
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    images: int = 0
    batches: list[int] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.images / self.wall

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def body(args: argparse.Namespace, client: int, index: int) -> dict:
    return {"prompt": f"a photo of a cat, client {client}, request {index}", "negative_prompt": "blurry",
            "seed": 1000 * client + index, "subseed": 7, "steps": args.steps, "width": args.width,
            "height": args.height, "sampler_name": args.sampler}


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


async def one_request(http, args: argparse.Namespace, client: int, index: int, result: ModeResult) -> None:
    started = time.perf_counter()
    response = await http.post("/sdapi/v1/txt2img", json=body(args, client, index))
    response.raise_for_status()
    result.latencies.append(time.perf_counter() - started)
    result.images += len(response.json()["images"])


async def wave(port: int, args: argparse.Namespace, index: int, result: ModeResult) -> None:
    """`clients` concurrent requests against one server; adds the wave's wall time."""
    import httpx

    limits = httpx.Limits(max_connections=args.clients * 2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=3600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one_request(http, args, client, index, result) for client in range(args.clients)))
        result.wall += time.perf_counter() - started


def start_mode(engine, max_size: int, args: argparse.Namespace) -> tuple[ModeResult, int, object]:
    """A server for one --batch-max-size, warmed up with one request."""
    from dataclasses import replace

    from webui_api.app import create_app
    from webui_api.settings import Settings

    port = free_port()
    base = Settings.layout(Path(tempfile.mkdtemp()))
    settings = replace(base, port=port, batch_max_size=max_size, batch_wait_ms=args.wait_ms)
    app = create_app(settings, engine=engine)
    server, thread = start_server(app, port)
    asyncio.run(wave(port, argparse.Namespace(**{**vars(args), "clients": 1}), 99, ModeResult(max_size)))
    result = ModeResult(max_size)
    app.state.runtime.scheduler.on_batch = result.batches.append  # the metrics hook, read by this script
    return result, port, (server, thread)


def run_modes(engine, args: argparse.Namespace, sizes: list[int]) -> list[ModeResult]:
    modes = [start_mode(engine, size, args) for size in sizes]
    for index in range(args.rounds):
        for result, port, _ in modes:
            asyncio.run(wave(port, args, index, result))
    for _, _, (server, thread) in modes:
        server.should_exit = True
        thread.join(30)
    return [result for result, _, _ in modes]


def report(args: argparse.Namespace, results: list[ModeResult]) -> None:
    import torch

    base = results[0]
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"torch threads={torch.get_num_threads()} device={args.device}"
    )
    print(
        f"load: {args.rounds} rounds of {args.clients} concurrent requests, {args.width}x{args.height}, {args.steps} "
        "steps, "
        f"{args.sampler}, batch wait {args.wait_ms:g} ms"
    )
    print("| --batch-max-size | images/s | p50 latency | p99 latency | throughput ratio | p50 ratio | batches formed |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        formed = f"{len(r.batches)} (sizes {sorted(set(r.batches))})" if r.batches else "none"
        print(f"| {r.max_size} | {r.throughput:.2f} | {r.percentile(0.5):.2f} s | {r.percentile(0.99):.2f} s | "
              f"{r.throughput / base.throughput:.2f} | {r.percentile(0.5) / base.percentile(0.5):.2f} | {formed} |")


def probe_row_classes(engine, rows: int = 16) -> None:
    """Print the UNet's kernel classes (call sizes whose row 0 gets the same bits) and the call
    sizes whose rows do not depend on their position: what --batch-unet-rows must respect."""
    import torch

    model = engine.loaded
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, model.latent_channels, 16, 16, generator=generator).to(model.device, model.dtype)
    context = torch.randn(rows, 77, model.unet.config.cross_attention_dim, generator=generator).to(
        model.device, model.dtype
    )
    t = torch.full((rows,), 500.0, device=model.device)
    with torch.inference_mode():
        classes = kernel_classes([model.unet(x[:m], t[:m], encoder_hidden_states=context[:m], return_dict=False)[0][0]
                                  for m in range(1, rows + 1)])
        invariant = [m for m in range(2, rows + 1) if position_invariant(model, x[:m], t[:m], context[:m])]
    print(f"torch threads={torch.get_num_threads()}: call sizes whose row 0 agrees bit for bit: {classes}")
    print(f"call sizes whose rows give the same bits at every position (rows rolled): {invariant}")


def kernel_classes(first_rows: list) -> list[list[int]]:
    """Group call sizes 1..n by bit-equal first rows."""
    import torch

    classes: list[tuple[object, list[int]]] = []
    for size, row in enumerate(first_rows, start=1):
        match = next((sizes for value, sizes in classes if torch.equal(value, row)), None)
        if match is None:
            classes.append((row, [size]))
        else:
            match.append(size)
    return [sizes for _, sizes in classes]


def position_invariant(model, x, t, context) -> bool:
    """Whether rolling the rows of a call only rolls its output (no row depends on its slot)."""
    import torch

    first = model.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    for shift in range(1, x.shape[0]):
        rolled = model.unet(x.roll(shift, 0), t, encoder_hidden_states=context.roll(shift, 0), return_dict=False)[0]
        if not torch.equal(first, rolled.roll(-shift, 0)):
            return False
    return True


def main() -> None:
    args = parse_args()
    from webui_api.engine.facade import Engine

    engine = Engine(device=args.device, dtype="auto")
    engine.load()
    if args.probe:
        probe_row_classes(engine)
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    report(args, run_modes(engine, args, sizes))


if __name__ == "__main__":
    main()

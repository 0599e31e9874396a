"""Checkpoint switch time: from disk (sd_checkpoints_limit 1) vs from the LRU (limit 2).

Two random-weight checkpoints in the original single-file layout (float16, as distributed)
are written to a temporary folder, or two existing ones are taken from --dir. The engine
then (1) loads the first one cold, hashing included, (2) switches back and forth with
`sd_checkpoints_limit` 1, so every switch reads and builds the model from disk (hashes come
from cache.json), and (3) switches back and forth with limit 2, where both models stay
loaded (on a GPU the inactive one is parked in CPU RAM and moved back). Medians are printed.

Usage: PYTHONPATH=. python scripts/bench_checkpoint_switch.py [--size sd15|tiny] [--repeats 4]
       [--device cpu|cuda] [--dtype float32|float16] [--dir FOLDER_WITH_TWO_CHECKPOINTS]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--repeats", type=int, default=4, help="switches measured per mode")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--dir", type=Path, default=None, help="use the first two checkpoints found here")
    return parser.parse_args()


def write_random_checkpoints(folder: Path, full_size: bool) -> None:
    """Two SD1 checkpoints with different random weights (the test suite's generator)."""
    import torch

    from tests.engine.ldm_checkpoints import build_networks, write_checkpoint

    for index, name in enumerate(("first.safetensors", "second.safetensors")):
        nets = build_networks("sd1", seed=index, full_size=full_size, dtype=torch.float16)
        write_checkpoint(folder / name, nets)
        del nets


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000.0


def measure(folder: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    from webui_api.engine.facade import Engine
    from webui_api.engine.loading.discovery import ModelPaths

    engine = Engine(device=args.device, dtype=args.dtype, paths=ModelPaths(data_dir=folder, ckpt_dirs=(folder,)))
    first, second = (info.title for info in engine.checkpoints()[:2])
    results: dict[str, list[float]] = {"cold load (hash + read + build)": [timed(lambda: engine.load(first))]}
    engine.models.set_limit(1)
    disk = [timed(lambda t=title: engine.load(t)) for title in [second, first] * args.repeats]
    results["switch from disk (limit 1)"] = disk
    engine.models.set_limit(2)
    engine.load(second)  # both in the LRU now
    cached = [timed(lambda t=title: engine.load(t)) for title in [first, second] * args.repeats]
    results["switch from the LRU (limit 2)"] = cached
    return results


def report(results: dict[str, list[float]], args: argparse.Namespace, size_bytes: int) -> None:
    import torch

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device {args.device}, dtype {args.dtype}, checkpoint {size_bytes / 1e9:.2f} GB")
    print("| mode | runs | median | min | max |")
    print("|---|---|---|---|---|")
    for mode, times in results.items():
        print(
            f"| {mode} | {len(times)} | {statistics.median(times):.1f} ms | {min(times):.1f} ms | {max(times):.1f} ms |"
        )


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.dir or Path(scratch)
        if args.dir is None:
            write_random_checkpoints(folder, full_size=args.size == "sd15")
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".ckpt"))
        results = measure(folder, args)
        report(results, args, files[0].stat().st_size)


if __name__ == "__main__":
    main()

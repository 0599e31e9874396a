"""The device suite: speed and CUDA correctness of this server against plain diffusers, in one run.

For each model (full-size random-weight SD1.5 and SDXL, written as original-layout checkpoints
and loaded through the engine; `--smoke`: tiny random SD1 and SDXL checkpoints on the CPU) in one process:

- speed: plain diffusers pipeline (same weights, SDPA) vs this engine eager vs `--compile` (and eager
  with token merging, `token_merging_ratio` 0.5), as
  s/step at batch 1 (the difference between an N-step and a 1-step request, so fixed costs cancel),
  end-to-end seconds of one request over loopback HTTP, images/s with 8 concurrent clients with
  cross-request batching off and on, peak VRAM per section;
- correctness: every sampler runs a short half-precision generation and gives a non-constant
  image; "GPU" noise equals A1111's draw (torch.manual_seed + torch.randn on the device); batched
  results equal unbatched ones bit for bit, or the difference is reported.

Prints a JSON document and a markdown table; exits 1 when a section failed (its error is in the
JSON). Installs nothing; see benchmarks/README.md for the wheels it needs on a bare GPU machine.

Usage: python benchmarks/gpu_suite.py [--smoke] [--models sd1,sdxl] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One model and the request shape it is measured at."""

    family: str  # "sd1" | "sdxl"
    size: int
    steps: int
    sampler_size: int  # image side for the per-sampler correctness pass
    clients: int = 8
    full_size: bool = True  # False (--smoke): the test suite's tiny networks, same file layout and code path


FULL_CASES = {"sd1": Case("sd1", 512, 20, 256), "sdxl": Case("sdxl", 1024, 30, 512)}
SMOKE_CASES = {"sd1": Case("sd1", 64, 3, 64, clients=4, full_size=False),
               "sdxl": Case("sdxl", 64, 3, 64, clients=4, full_size=False)}


@dataclass
class Report:
    """What the run found: numbers per model and section, and every section's error."""

    meta: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def section(self, model: str, name: str, run: Callable[[], dict[str, Any]]) -> None:
        """Run one section; a failure is recorded (with its traceback on stderr), not raised,
        so one broken section does not hide the others' numbers. The exit code reports it."""
        reset_peak_memory()
        started = time.perf_counter()
        try:
            values = run()
        except Exception as exc:  # reported in the JSON and by the exit status, never swallowed
            traceback.print_exc()
            self.errors[f"{model}/{name}"] = f"{type(exc).__name__}: {exc}"
            return
        values["section_s"] = round(time.perf_counter() - started, 2)
        values["peak_vram_gib"] = peak_memory_gib()
        self.results.setdefault(model, {})[name] = values
        print(f"[{model}] {name}: {json.dumps(values)}", file=sys.stderr, flush=True)


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------
# Model files and servers
# ---------------------------------------------------------------------------


def write_checkpoint(family: str, folder: Path, full_size: bool) -> None:
    """A random-weight checkpoint in the original single-file layout (float16); full size, or
    the test suite's tiny networks for --smoke."""
    import safetensors.torch

    from tests.engine.ldm_checkpoints import build_networks, ldm_state_dict  # the repository's test builder

    target = folder / "Stable-diffusion"
    target.mkdir(parents=True, exist_ok=True)
    state = ldm_state_dict(build_networks(family, seed=7, full_size=full_size, dtype=torch.float16))
    safetensors.torch.save_file(state, str(target / f"{family}-random.safetensors"))


def server_settings(data_dir: Path, device_flags: list[str], extra: list[str]) -> Any:
    from webui_api.cli import parse_args

    settings, unknown = parse_args(["--data-dir", str(data_dir), "--nowebui", *device_flags, *extra], {})
    if unknown:
        raise ValueError(f"unknown flags {unknown}")
    return replace(settings, result_cache_mb=0.0, audit_log=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One app on a loopback uvicorn server in a thread."""

    def __init__(self, settings: Any, engine: Any) -> None:
        import uvicorn

        from webui_api.app import create_app

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 600
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.wait_ready(deadline)

    def wait_ready(self, deadline: float) -> None:
        """Until /ready says 200: the startup model is loaded (and, with --compile, warmed up)."""
        while self.status("/ready") != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the server never became ready")
            time.sleep(0.1)

    def request(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """JSON over loopback HTTP with the standard library (nothing extra to install)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=900) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{path} answered {err.code}: {err.read()[:500]!r}") from err

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request(path, payload))

    def get(self, path: str) -> Any:
        return self.request(path)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def payload(case: Case, steps: int, seed: int = 1, **extra: Any) -> dict[str, Any]:
    return {"prompt": "a lighthouse on a cliff at dusk", "negative_prompt": "blurry", "steps": steps,
            "width": case.size, "height": case.size, "seed": seed, "sampler_name": "Euler", "cfg_scale": 7, **extra}


def timed(run: Callable[[], Any]) -> float:
    sync()
    started = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - started


def per_step(case: Case, run_steps: Callable[[int], Any]) -> dict[str, Any]:
    """Seconds per step from an N-step and a 1-step run (best of two each; fixed costs cancel)."""
    run_steps(1)  # warm-up: kernels, allocator, first-use paths
    one = min(timed(lambda: run_steps(1)) for _ in range(3))
    full = min(timed(lambda: run_steps(case.steps)) for _ in range(3))
    if full <= one:  # tiny models on a busy CPU: the steps vanish in the noise
        return {"s_per_step": None, "it_per_s": None, "request_s": round(full, 3)}
    step = (full - one) / (case.steps - 1)
    return {"s_per_step": round(step, 5), "it_per_s": round(1 / step, 2), "request_s": round(full, 3)}


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def diffusers_baseline(engine: Any, case: Case) -> dict[str, Any]:
    """The same weights in diffusers' own pipeline (Euler, SDPA, latent output: no VAE decode)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    model = engine.loaded or engine.load()  # the servers are idle between sections
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if model.text_encoder_2 is not None:
        pipe: Any = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoder,
                                              text_encoder_2=model.text_encoder_2, tokenizer=model.tokenizer,
                                              tokenizer_2=model.tokenizer_2, unet=model.unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                       unet=model.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(model.device)

    def run(steps: int) -> Any:
        with torch.inference_mode():
            return pipe(prompt="a lighthouse on a cliff at dusk", negative_prompt="blurry", num_inference_steps=steps,
                        width=case.size, height=case.size, guidance_scale=7.0, output_type="latent",
                        generator=generator.manual_seed(1))

    return {**per_step(case, run), "dtype": str(model.dtype)}


def engine_speed(server: Server, case: Case) -> dict[str, Any]:
    """This server over loopback HTTP: s/step and one whole request (PNG encoding included)."""
    return per_step(case, lambda steps: server.post("/sdapi/v1/txt2img", payload(case, steps)))


TOME_RATIO = 0.5  # token_merging_ratio for the ToMe section (A1111's slider goes to 0.9)


def engine_tome(server: Server, case: Case) -> dict[str, Any]:
    """engine_speed with token merging (override_settings token_merging_ratio). SD1 merges in its
    full-resolution attention; SDXL has none there (A1111's max_downsample=1), so it should
    match engine_eager."""
    extra = {"override_settings": {"token_merging_ratio": TOME_RATIO}}
    run = per_step(case, lambda steps: server.post("/sdapi/v1/txt2img", payload(case, steps, **extra)))
    return {**run, "tome_ratio": TOME_RATIO}


def concurrent_throughput(server: Server, case: Case) -> dict[str, Any]:
    """`clients` requests at once (different seeds, same shape); images per second."""
    def one(seed: int) -> Any:
        return server.post("/sdapi/v1/txt2img", payload(case, case.steps, seed=seed))

    one(0)
    with ThreadPoolExecutor(case.clients) as pool:
        started = time.perf_counter()
        list(pool.map(one, range(1, case.clients + 1)))
        wall = time.perf_counter() - started
    return {"clients": case.clients, "wall_s": round(wall, 3), "images_per_s": round(case.clients / wall, 3)}


def batched_vs_alone(batched: Server, plain: Server, case: Case) -> dict[str, Any]:
    """The same seeds sent concurrently to a batching server, then one at a time to it and to a
    server without batching: equal pixels? (The batching server pads every UNet call to the
    same row count so that its batched and lone results agree; a plain server need not.)"""
    seeds = list(range(100, 100 + min(case.clients, 4)))
    small = replace(case, size=case.sampler_size)

    def image(server: Server, seed: int) -> Any:
        return pixels(server.post("/sdapi/v1/txt2img", payload(small, 4, seed=seed))["images"][0])

    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(lambda s: image(batched, s), seeds))
    lone_batching = [image(batched, s) for s in seeds]
    lone_plain = [image(plain, s) for s in seeds]
    same_server = [max_diff(a, b) for a, b in zip(together, lone_batching, strict=True)]
    vs_plain = [max_diff(a, b) for a, b in zip(together, lone_plain, strict=True)]
    return {"images": len(seeds), "bit_identical": sum(d == 0 for d in same_server), "max_abs_pixel_diff":
            max(same_server), "bit_identical_vs_unbatched_server": sum(d == 0 for d in vs_plain),
            "max_abs_pixel_diff_vs_unbatched_server": max(vs_plain)}


def max_diff(a: Any, b: Any) -> float:
    return float(abs(a.astype("int16") - b.astype("int16")).max())


def pixels(encoded: str) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))


def every_sampler(server: Server, case: Case) -> dict[str, Any]:
    """Each sampler makes a short image in the server's precision; NaNs would come out flat."""
    names = [entry["name"] for entry in server.get("/sdapi/v1/samplers")]
    flat = []
    for name in names:
        reply = server.post("/sdapi/v1/txt2img", {**payload(replace(case, size=case.sampler_size), 4),
                                                   "sampler_name": name})
        if float(pixels(reply["images"][0]).std()) == 0.0:
            flat.append(name)
    if flat:
        raise AssertionError(f"samplers giving a constant image (non-finite output?): {flat}")
    return {"samplers": len(names)}


def gpu_noise(engine: Any, case: Case) -> dict[str, Any]:
    """randn_source "GPU" against A1111's draw: torch.manual_seed(seed); torch.randn(shape, device)."""
    from webui_api.engine.rng import randn_seeded

    shape = (4, case.size // 8, case.size // 8)
    mismatched = []
    for seed in (0, 1, 1234, 2**32 - 1):
        torch.manual_seed(seed)
        reference = torch.randn(shape, device=engine.device)
        if not torch.equal(randn_seeded(seed, shape, "GPU", engine.device), reference):
            mismatched.append(seed)
    if mismatched:
        raise AssertionError(f"GPU noise differs from the reference draw for seeds {mismatched}")
    return {"seeds_checked": 4, "device": str(engine.device)}


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def run_model(report: Report, case: Case, root: Path, device_flags: list[str], compile_backend: str) -> None:
    from webui_api.engine.compile import CompilePolicy
    from webui_api.engine.facade import Engine

    name = case.family
    data = root / name
    report.section(name, "write_checkpoint",
                   lambda: (write_checkpoint(case.family, data / "models", case.full_size), {})[1])
    settings = server_settings(data, device_flags, [])
    engine = Engine.from_settings(settings)
    servers: list[Server] = []
    try:
        plain = Server(settings, engine)
        servers.append(plain)
        report.section(name, "gpu_noise", lambda: gpu_noise(engine, case))
        report.section(name, "diffusers_eager", lambda: diffusers_baseline(engine, case))
        report.section(name, "engine_eager", lambda: engine_speed(plain, case))
        report.section(name, "engine_tome", lambda: engine_tome(plain, case))
        report.section(name, "samplers", lambda: every_sampler(plain, case))
        report.section(name, "clients_batching_off", lambda: concurrent_throughput(plain, case))
        batching = Server(server_settings(data, device_flags, ["--batch-max-size", str(case.clients)]), engine)
        servers.append(batching)
        report.section(name, "clients_batching_on", lambda: concurrent_throughput(batching, case))
        report.section(name, "batched_equals_alone", lambda: batched_vs_alone(batching, plain, case))
        for server in servers:
            server.close()
        servers.clear()
        engine.unload()
        compiled_engine = Engine.from_settings(settings)
        compiled_engine.models.setup = replace(compiled_engine.models.setup,
                                               compile_policy=CompilePolicy(True, "default", compile_backend))
        started = time.perf_counter()
        compiled = Server(settings, compiled_engine)  # ready once the model is loaded, compiled and warmed up
        servers.append(compiled)
        load_s = time.perf_counter() - started
        report.section(name, "engine_compile", lambda: {**engine_speed(compiled, case), "load_and_warm_up_s":
                                                         round(load_s, 1), "backend": compile_backend})
    finally:
        for server in servers:
            server.close()


def speedups(report: Report) -> None:
    """The issue's targets as ratios (per model) where both numbers exist."""
    for sections in report.results.values():
        base = sections.get("diffusers_eager", {}).get("s_per_step")
        for name in ("engine_eager", "engine_tome", "engine_compile"):
            ours = sections.get(name, {}).get("s_per_step")
            if base and ours:  # None where the steps vanished in the noise (tiny models)
                sections[name]["vs_diffusers"] = round(base / ours, 3)
        eager, tome = (sections.get(name, {}).get("s_per_step") for name in ("engine_eager", "engine_tome"))
        if eager and tome:
            sections["engine_tome"]["vs_engine_eager"] = round(eager / tome, 3)


def markdown(report: Report) -> str:
    rows = ["| model | section | it/s | s/request | images/s | vs diffusers | peak VRAM GiB | notes |",
            "|---|---|---|---|---|---|---|---|"]
    for model, sections in report.results.items():
        for name, v in sections.items():
            notes = {k: v[k] for k in ("bit_identical", "max_abs_pixel_diff", "samplers", "load_and_warm_up_s",
                                       "tome_ratio", "vs_engine_eager")
                     if k in v}
            rows.append(f"| {model} | {name} | {v.get('it_per_s', '')} | {v.get('request_s', v.get('wall_s', ''))} | "
                        f"{v.get('images_per_s', '')} | {v.get('vs_diffusers', '')} | {v.get('peak_vram_gib', '')} | "
                        f"{json.dumps(notes) if notes else ''} |")
    rows += [f"| {key} | FAILED | | | | | | {error[:200]} |" for key, error in report.errors.items()]
    return "\n".join(rows)


def metadata(smoke: bool) -> dict[str, Any]:
    import diffusers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"mode": "smoke" if smoke else "full", "device": device,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__}


# what a run imports, by module name (the image's packages plus the wheels in benchmarks/README.md)
NEEDED_MODULES = ("torch", "diffusers", "transformers", "safetensors", "fastapi", "uvicorn", "pydantic", "PIL", "numpy",
                  "yaml", "lark", "torchsde", "spandrel", "limits", "prometheus_client", "packaging", "huggingface_hub",
                  "importlib_metadata", "regex", "requests", "filelock")


def missing_modules() -> list[str]:
    import importlib.util

    return [name for name in NEEDED_MODULES if importlib.util.find_spec(name) is None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny SD1 and SDXL checkpoints on the CPU, same code (CI)")
    parser.add_argument("--models", default="sd1,sdxl", help="which of sd1,sdxl to run")
    parser.add_argument("--dtype", default="auto", help="server --dtype for the engine (auto: fp16 on CUDA)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default: inductor; "
                        "eager with --smoke)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--check-deps", action="store_true", help="only list the modules this machine lacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_modules()
    if args.check_deps or missing:
        print(json.dumps({"missing_modules": missing}))
        return 1 if missing else 0
    report = Report(metadata(args.smoke))
    cases = [(SMOKE_CASES if args.smoke else FULL_CASES)[m] for m in args.models.split(",")]
    device_flags = ["--use-cpu", "all"] if args.smoke else (["--dtype", args.dtype] if args.dtype != "auto" else [])
    backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    if args.smoke:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as root:
        for case in cases:
            run_model(report, case, Path(root), device_flags, backend)
    speedups(report)
    document = {"meta": report.meta, "results": report.results, "errors": report.errors}
    text = json.dumps(document, indent=2)
    if args.json is not None:
        args.json.write_text(text)
    print(text)
    print(markdown(report))
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

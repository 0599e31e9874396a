"""Sampler + CFG overhead per sampling step, against a bare UNet forward of the same batch.

A mid-size diffusers UNet2DConditionModel with random weights (block widths 128/256/256,
SD1's 768-wide cross-attention, 77 tokens) runs on a 32x32 latent, batch 1 with CFG (so the
UNet batch is 2). For each sampler the whole sampling loop runs through our CFG denoiser
and wrappers exactly as the pipeline calls it (noise sampler, callback included); the time
per denoiser call is divided by the median time of a bare `unet(x, t, ctx)` call on the
same (2, 4, 32, 32) batch, measured interleaved with the sampler runs. A ratio of 1.00
means the samplers, CFG and wrappers add nothing measurable.

On a shared or busy machine the bare-forward comparison is noisy (other processes slow some
calls and not others), so the script also times the UNet calls *inside* each sampling run
and reports total / in-UNet time ("in-run ratio"): the overhead measured in the same run,
immune to drift between runs. Timings are minima over the repeats (the least disturbed run).

Usage: python scripts/bench_sampler_overhead.py [--steps 8] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

SAMPLERS = ("Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "Heun", "DDIM", "UniPC", "LCM")


class TimedUNet:
    """The UNet with a stopwatch: accumulates the seconds spent inside its forward calls."""

    def __init__(self, unet) -> None:
        self.unet, self.config, self.seconds = unet, unet.config, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.unet(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return out


@dataclass
class Bench:
    model: object
    cond: object  # BatchConditioning for the sampler runs
    ctx: torch.Tensor  # the same rows, (2, 77, 768), for the bare forward
    x_shape: tuple


def build(latent: int) -> Bench:
    """The mid-size UNet in a LoadedModel shell (no VAE / text encoder needed)."""
    from diffusers import UNet2DConditionModel

    from webui_api.engine.cond_types import BatchConditioning
    from webui_api.engine.models import CheckpointInfo, LoadedModel, scaled_linear_alphas_cumprod

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=latent,
        block_out_channels=(128, 256, 256),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
    ).eval().requires_grad_(False)
    info = CheckpointInfo("bench", "bench", None, None, "<bench>", None)
    model = LoadedModel(info=info, unet=TimedUNet(unet), vae=None, text_encoder=None, tokenizer=None,
                        alphas_cumprod=scaled_linear_alphas_cumprod(), device=torch.device("cpu"), dtype=torch.float32)
    ctx = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(1))
    return Bench(model, BatchConditioning.plain(ctx[:1], ctx[1:]), ctx, (1, 4, latent, latent))


def bare_forward(bench: Bench) -> float:
    """Seconds for one UNet call on the CFG batch (cond + uncond rows)."""
    x = torch.randn((2,) + bench.x_shape[1:])
    start = time.perf_counter()
    bench.model.unet.unet(x, torch.tensor([500.0, 500.0]), encoder_hidden_states=bench.ctx, return_dict=False)
    return time.perf_counter() - start


def sample_once(bench: Bench, name: str, steps: int) -> tuple[float, float, int]:
    """(seconds per denoiser call, in-UNet seconds per call, calls) for one full sampling run."""
    from samplers.brownian import BrownianTreeNoise, schedule_interval
    from samplers.registry import (
        KIND_TIMESTEPS,
        compute_sigmas,
        compute_timesteps,
        find_sampler,
        find_scheduler,
        sampler_call_kwargs,
    )
    from webui_api.engine.denoiser import CFGDenoiser, GuidanceOptions, make_inner
    from webui_api.progress import CancelToken

    sampler = find_sampler(name)
    inner = make_inner(bench.model, sampler.kind)
    if sampler.kind == KIND_TIMESTEPS:
        schedule = compute_timesteps(sampler, steps)
    else:
        schedule = compute_sigmas(sampler, find_scheduler("automatic"), steps, inner.sigmas)
    generator = torch.Generator().manual_seed(2)
    noise = lambda a, b: torch.randn(bench.x_shape, generator=generator)  # noqa: E731
    if sampler.brownian_noise:
        noise = BrownianTreeNoise(bench.x_shape[1:], *schedule_interval(schedule), [2])
    kwargs = sampler_call_kwargs(sampler, schedule, eta=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
                                 noise_sampler=noise, alphas_cumprod=getattr(inner, "alphas_cumprod", None),
                                 model_sigma_min=getattr(inner, "sigma_min", None),
                                 model_sigma_max=getattr(inner, "sigma_max", None))
    cfg = CFGDenoiser(inner, CancelToken(), GuidanceOptions(total_steps=steps))
    x = torch.randn(bench.x_shape, generator=generator)
    extra = {"cond": bench.cond, "cond_scale": 7.0, "s_min_uncond": 0.0}
    bench.model.unet.seconds = 0.0
    start = time.perf_counter()
    sampler.function(cfg, x, schedule, extra_args=extra, callback=lambda info: None, **kwargs)
    total = time.perf_counter() - start
    return total / cfg.step, bench.model.unet.seconds / cfg.step, cfg.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = build(args.latent)
    with torch.inference_mode():
        for _ in range(3):
            bare_forward(bench)  # warm-up
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, latent {args.latent}x{args.latent},"
              f" CFG batch 2, {args.steps} steps, {args.repeats} repeats (minima)", flush=True)
        print(f"{'sampler':<14}{'calls':>6}{'bare ms':>10}{'step ms':>10}{'ratio':>8}{'in-run':>8}", flush=True)
        for name in SAMPLERS:
            bare, runs, calls = [], [], 0
            for _ in range(args.repeats):
                bare += [bare_forward(bench) for _ in range(2)]
                per_call, in_unet, calls = sample_once(bench, name, args.steps)
                runs.append((per_call, per_call / in_unet))
                bare += [bare_forward(bench) for _ in range(2)]
            b, s = min(bare), min(r[0] for r in runs)
            print(f"{name:<14}{calls:>6}{b * 1000:>10.1f}{s * 1000:>10.1f}{s / b:>8.3f}{min(r[1] for r in runs):>8.3f}",
                  flush=True)


if __name__ == "__main__":
    main()

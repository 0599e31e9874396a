"""Which queued generation jobs may share one UNet batch (cross-request batching).

Two jobs may run as one sampler batch only when every input of the sampling loop that is not
per image is the same for both: checkpoint, VAE, LoRAs, size, sampler, schedule, steps, CFG,
eta / churn, clip skip, tiling and every option the pipeline reads. Per-image inputs (prompts,
negative prompts, seeds, subseeds and their noise streams) may differ: the engine keeps them
per job. `batch_key` returns None for a job that must run alone.

This module imports neither torch nor fastapi: the scheduler and the routes use it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from .jobs import GenerationJob

# <lora:name:1.0>, <lyco:...>, <hypernet:...>: the engine applies the first prompt's networks.
_EXTRA_NETWORK_TAG = re.compile(r"<[^:<>]+:[^<>]*>")

log = logging.getLogger(__name__)
DEFAULT_BATCH_MAX_SIZE = 4
DEFAULT_BATCH_WAIT_MS = 10.0


@dataclass(frozen=True)
class BatchingConfig:
    """--batch-max-size (images in one UNet batch; 1 turns batching off) and --batch-wait-ms
    (how long the worker waits for compatible jobs to arrive before it starts a batch)."""

    max_size: int = DEFAULT_BATCH_MAX_SIZE
    wait_ms: float = DEFAULT_BATCH_WAIT_MS

    def __post_init__(self) -> None:
        if self.max_size < 1 or self.wait_ms < 0:
            raise ValueError(
                f"batch max size must be >= 1 and wait >= 0 ms; got max_size={self.max_size}, wait_ms={self.wait_ms}"
            )

    @classmethod
    def for_server(cls, max_size: int, wait_ms: float, vram_mode: str = "normal") -> BatchingConfig:
        """The server's batching: --batch-max-size, unless a --medvram/--medvram-sdxl/--lowvram
        mode offloads models (then off, with one log line; see `batch_size_for_vram`)."""
        effective = batch_size_for_vram(max_size, vram_mode)
        if effective != max_size:
            log.warning("--%s: cross-request batching is off (--batch-max-size %d ignored): a batch of several "
                        "jobs multiplies the UNet's activation memory, which the VRAM mode is there to save",
                        vram_mode, max_size)
        return cls(effective, wait_ms)

    @property
    def enabled(self) -> bool:
        return self.max_size > 1

    @property
    def wait_seconds(self) -> float:
        return self.wait_ms / 1000.0


OFFLOADING_VRAM_MODES = ("medvram", "medvram-sdxl", "lowvram")  # engine.offload's modes that offload


def batch_size_for_vram(max_size: int, vram_mode: str) -> int:
    """Cross-request batch size under a VRAM mode: 1 (off) when models are offloaded to save
    VRAM, since N jobs in one UNet batch need about N times the activations; `max_size` otherwise.
    --medvram-sdxl counts too: the batch size is a server setting, and the SDXL jobs it exists
    for are exactly the ones a batch would push out of memory."""
    return 1 if vram_mode in OFFLOADING_VRAM_MODES else max_size


def why_not_batchable(job: GenerationJob) -> str | None:
    """The reason a job must run alone, or None when it may share a batch.

    First version: plain single-iteration txt2img only (no hires fix, refiner, ControlNet,
    face restoration, img2img), and no sampler whose steps depend on the whole batch."""
    checks = (
        (job.kind != "txt2img", f"kind {job.kind!r}"),
        (job.n_iter != 1, f"n_iter {job.n_iter}"),
        (job.hires is not None, "hires fix"),
        (job.refiner is not None, "refiner"),
        (bool(job.controlnet_units), "ControlNet units"),
        (job.restore_faces, "restore_faces"),
        (job.sampling.sampler.batch_coupled, f"sampler {job.sampling.sampler_name!r}"),
    )
    return next((reason for failed, reason in checks if failed), None)


def batch_key(job: GenerationJob) -> Hashable | None:
    """The key two jobs must share to run in one batch; None when the job runs alone.

    Prompt token lengths are not part of it (counting tokens needs the tokenizer): the
    engine splits a group whose prompts encode to different chunk counts."""
    if why_not_batchable(job) is not None:
        return None
    return (
        job.model_title,
        job.width,
        job.height,
        job.sampling,
        job.clip_skip,
        job.tiling,
        network_tags(job.prompts[0]),
        frozen_options(job.options),
    )


def network_tags(prompt: str) -> tuple[str, ...]:
    """The extra-network tags of a prompt, in order: equal tags mean equal weight patches."""
    return tuple(_EXTRA_NETWORK_TAG.findall(prompt))


def frozen_options(options: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The whole per-job options snapshot as a hashable value.

    Every option is included, not a list of the ones sampling reads: a forgotten option would
    silently change images, an extra one only costs a missed batch. Values are compared by
    repr so lists and dicts hash too."""
    return tuple(sorted((str(key), repr(value)) for key, value in options.items()))

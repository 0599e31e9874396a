"""The conditioning a batch samples with, as data: the contract between prompt handling
(`prompts.py` / `conditioning.py`) and guidance (`denoiser.py`).

A1111 encodes every distinct (sub)prompt once per schedule variant; during sampling the CFG
denoiser picks, at each denoiser call, the variant whose `end_at_step` is the first one at or
after the call counter (falling back to the FIRST variant past the end, A1111's quirk), and
combines AND sub-prompts with their weights: denoised = u + sum_k w_k * cfg * (c_k - u).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class CondTensors:
    """One encoded prompt: cross-attention states (tokens, C) and, for SDXL, the pooled vector
    (pooled text embedding + size/crop embeddings, i.e. the UNet's `vector` input)."""

    crossattn: torch.Tensor
    vector: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class ScheduledCond:
    """One prompt over the sampling steps: (end_at_step, tensors) sorted by end_at_step."""

    variants: tuple[tuple[int, CondTensors], ...]

    def at(self, step: int) -> CondTensors:
        for end_at_step, tensors in self.variants:
            if step <= end_at_step:
                return tensors
        return self.variants[0][1]


@dataclass(frozen=True)
class ComposableCond:
    """One image's positive prompt: its AND sub-prompts, each with its weight."""

    parts: tuple[tuple[ScheduledCond, float], ...]


@dataclass(frozen=True)
class BatchConditioning:
    """Everything guidance needs for one batch: per-image positive and negative prompts."""

    cond: tuple[ComposableCond, ...]
    uncond: tuple[ScheduledCond, ...]

    @classmethod
    def plain(cls, cond: torch.Tensor, uncond: torch.Tensor) -> "BatchConditioning":
        """Single-variant, single-part conditioning from (B, tokens, C) tensors."""
        def one(row: torch.Tensor) -> ScheduledCond:
            return ScheduledCond(((0, CondTensors(row)),))

        return cls(
            cond=tuple(ComposableCond(((one(row), 1.0),)) for row in cond),
            uncond=tuple(one(row) for row in uncond),
        )

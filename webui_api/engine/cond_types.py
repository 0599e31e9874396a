"""The conditioning a batch samples with, as data: the contract between prompt handling
(`prompts.py` / `conditioning.py`) and guidance (`denoiser.py`).

A1111 encodes every distinct (sub)prompt once per schedule variant; during sampling the CFG
denoiser picks, at each denoiser call, the variant whose `end_at_step` is the first one at or
after the call counter (falling back to the FIRST variant past the end, A1111's quirk), and
combines AND sub-prompts with their weights: denoised = u + sum_k w_k * cfg * (c_k - u).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CondTensors:
    """One encoded prompt: cross-attention states (tokens, C) and, for SDXL, `vector`.

    SDXL's `vector` here is `cat(pooled_text_embedding, time_ids)` along the last axis: the
    pooled OpenCLIP-G embedding (1280) followed by the *raw* size/crop numbers that diffusers
    embeds itself, (orig_h, orig_w, crop_top, crop_left, target_h, target_w) for the base model
    (length 1286) or (orig_h, orig_w, crop_top, crop_left, aesthetic_score) for the refiner
    (length 1285). The denoiser splits it back with `split_sdxl_vector` into diffusers'
    added_cond_kwargs {"text_embeds", "time_ids"}. (sgm's own `vector` carries the sinusoidal
    embeddings instead; diffusers computes those inside the UNet from time_ids.)
    """

    crossattn: torch.Tensor
    vector: torch.Tensor | None = None


def split_sdxl_vector(
    vector: torch.Tensor, projection_input_dim: int, time_embed_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (N, pooled + n_ids) vectors into (text_embeds, time_ids) for a diffusers SDXL UNet.

    The UNet config gives projection_class_embeddings_input_dim = pooled + n_ids * time_embed_dim
    (2816 = 1280 + 6 * 256 for the base model), so the number of time ids follows from the
    vector length: n_ids = (projection_input_dim - length) / (time_embed_dim - 1).
    """
    length = int(vector.shape[-1])
    n_ids, remainder = divmod(projection_input_dim - length, time_embed_dim - 1)
    if remainder or n_ids < 1 or n_ids >= length:
        raise ValueError(
            f"SDXL vector of length {length} does not fit a UNet expecting {projection_input_dim} ="
            f" pooled + n_time_ids * {time_embed_dim}; expected cat(pooled, time_ids)"
        )
    return vector[..., :-n_ids], vector[..., -n_ids:]


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
    def plain(cls, cond: torch.Tensor, uncond: torch.Tensor) -> BatchConditioning:
        """Single-variant, single-part conditioning from (B, tokens, C) tensors."""
        def one(row: torch.Tensor) -> ScheduledCond:
            return ScheduledCond(((0, CondTensors(row)),))

        return cls(
            cond=tuple(ComposableCond(((one(row), 1.0),)) for row in cond),
            uncond=tuple(one(row) for row in uncond),
        )

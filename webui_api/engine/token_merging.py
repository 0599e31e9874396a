"""Token merging (ToMe for Stable Diffusion) around one sampler pass: A1111's
`token_merging_ratio` options, written from Bolya & Hoffman's algorithm.

What it does: in every transformer block of the UNet that runs at the highest resolution(s),
the self-attention sees fewer tokens. Before `attn1`, the block's tokens are split into a
destination set (one token per `stride_x` x `stride_y` cell of the latent grid, its top-left,
as A1111 asks for with `use_rand=False`) and a source set; each source token is paired with
its most similar destination (cosine similarity of the block's input, the metric ToMe uses),
and the `r = int(tokens * ratio)` best-matched sources are averaged into their destinations.
Self-attention runs on the shorter sequence; afterwards every merged source gets its
destination's output back ("unmerge"), so the block's output has its full shape. Cross
attention and the MLP are left alone (A1111: merge_attn only).

A1111 applies tomesd with `ratio`, `use_rand=False`, `merge_attn=True`, cross-attention and
MLP merging off, and tomesd's defaults `max_downsample=1`, `sx=sy=2`: only blocks at the
latent's full resolution merge. SD1/SD2 have attention there; SDXL does not (its first level
has no transformer blocks), so a ratio changes nothing on SDXL, exactly as in A1111.

Each image (each batch row) is matched on its own tokens, so rows never mix: cond and uncond,
or two jobs sharing a batch, merge independently. The patch is forward hooks on the UNet, its
transformer blocks and their `attn1`; the module tree and the weights are never touched, and
`restore()` removes every hook (the context manager does so even when sampling fails). A UNet
compiled with --compile runs eagerly during a merged pass: torch.compile would not see the hooks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.attention import BasicTransformerBlock
from torch.utils.hooks import RemovableHandle

from webui_api.engine.compile import is_compiled

MAX_DOWNSAMPLE = 1  # tomesd's default, which A1111 keeps: only the full-resolution blocks merge
STRIDE = 2  # tomesd's default sx = sy = 2: one destination token per 2x2 cell


@dataclass(frozen=True)
class MergeSettings:
    """One pass's ToMe settings; `ratio` <= 0 means no merging at all."""

    ratio: float
    max_downsample: int = MAX_DOWNSAMPLE
    stride_x: int = STRIDE
    stride_y: int = STRIDE


@dataclass(frozen=True)
class TokenMerge:
    """How one block call merges and unmerges its tokens (indices per batch row).

    `dst` are the destination positions in the sequence, `src` the source positions;
    `kept` and `moved` index into `src` (sources that stay, sources that are merged away),
    `targets` index into `dst` (where each moved source goes)."""

    length: int
    dst: torch.Tensor  # (D,)
    src: torch.Tensor  # (S,)
    kept: torch.Tensor  # (B, S - r)
    moved: torch.Tensor  # (B, r)
    targets: torch.Tensor  # (B, r)

    @property
    def merged_length(self) -> int:
        return self.kept.shape[1] + self.dst.shape[0]

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N - r, C): the kept sources, then the destinations averaged with
        the sources merged into them."""
        channels = x.shape[-1]
        sources, destinations = x[:, self.src], x[:, self.dst]
        kept = sources.gather(1, _expand(self.kept, channels))
        moving = sources.gather(1, _expand(self.moved, channels))
        merged = destinations.scatter_reduce(1, _expand(self.targets, channels), moving, reduce="mean")
        return torch.cat([kept, merged], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N - r, C) -> (B, N, C): every token back in its place; a merged source takes
        its destination's value."""
        batch, _, channels = y.shape
        n_kept = self.kept.shape[1]
        kept, destinations = y[:, :n_kept], y[:, n_kept:]
        out = y.new_empty(batch, self.length, channels)
        out[:, self.dst] = destinations
        kept_at = self.src[self.kept]  # (B, S - r) sequence positions
        moved_at = self.src[self.moved]
        out.scatter_(1, _expand(kept_at, channels), kept)
        out.scatter_(1, _expand(moved_at, channels), destinations.gather(1, _expand(self.targets, channels)))
        return out


def _expand(index: torch.Tensor, channels: int) -> torch.Tensor:
    return index.unsqueeze(-1).expand(*index.shape, channels)


def destination_positions(width: int, height: int, stride_x: int, stride_y: int, device: torch.device) -> torch.Tensor:
    """The top-left token of every whole stride cell, in row-major order. Rows and columns
    left over when the grid does not divide by the stride are all sources."""
    rows = torch.arange(0, (height // stride_y) * stride_y, stride_y, device=device)
    cols = torch.arange(0, (width // stride_x) * stride_x, stride_x, device=device)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def bipartite_merge(
    metric: torch.Tensor, width: int, height: int, r: int, stride_x: int = STRIDE, stride_y: int = STRIDE
) -> TokenMerge | None:
    """The merge of `r` tokens of `metric` (B, N, C; N == width * height, row-major) by
    bipartite soft matching; None when nothing is merged (r <= 0, or no destination)."""
    length = metric.shape[1]
    dst = destination_positions(width, height, stride_x, stride_y, metric.device)
    if r <= 0 or dst.numel() == 0 or dst.numel() >= length:
        return None
    is_source = torch.ones(length, dtype=torch.bool, device=metric.device)
    is_source[dst] = False
    src = is_source.nonzero().squeeze(1)
    r = min(r, src.numel())
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(metric.dtype).tiny)
        # a zero token (a padding row) gets similarity 0 rather than NaN
        scores = unit[:, src] @ unit[:, dst].transpose(-1, -2)  # (B, S, D) cosine similarity
        best_score, best_dst = scores.max(dim=-1)
        ranked = best_score.argsort(dim=-1, descending=True)  # most similar sources first
    moved, kept = ranked[:, :r], ranked[:, r:]
    return TokenMerge(length, dst, src, kept, moved, best_dst.gather(1, moved))


def block_merge(hidden: torch.Tensor, latent_size: tuple[int, int], settings: MergeSettings) -> TokenMerge | None:
    """The merge one transformer block call gets: its level's downsampling from the token
    count, as tomesd measures it, and a merge only at levels up to `max_downsample`."""
    latent_h, latent_w = latent_size
    tokens = hidden.shape[1]
    if tokens == 0 or settings.ratio <= 0:
        return None
    downsample = math.ceil(math.sqrt((latent_h * latent_w) // tokens))
    if downsample > settings.max_downsample:
        return None
    width, height = math.ceil(latent_w / downsample), math.ceil(latent_h / downsample)
    if width * height != tokens:  # not the latent grid (an unexpected layout): leave it alone
        return None
    return bipartite_merge(hidden, width, height, int(tokens * settings.ratio), settings.stride_x, settings.stride_y)


@dataclass
class _UNetCall:
    """The latent (height, width) of the UNet call that is running."""

    latent_size: tuple[int, int] | None = None


@dataclass
class _BlockCall:
    """The merge of the block call that is running (None: run unmerged)."""

    merge: TokenMerge | None = None


@dataclass
class TokenMergingPatch:
    """The hooks one pass installed; `restore` removes them all (and gives a compiled UNet its
    compiled call back)."""

    handles: list[RemovableHandle] = field(default_factory=list)
    blocks: int = 0  # transformer blocks hooked (all levels; only some merge)
    paused_compile: tuple[torch.nn.Module, Any] | None = None  # (unet, its compiled call), see pause_compiled

    def restore(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        if self.paused_compile is not None:
            unet, compiled_call = self.paused_compile
            unet._compiled_call_impl = compiled_call
            self.paused_compile = None


def pause_compiled(unet: torch.nn.Module, patch: TokenMergingPatch) -> None:
    """A UNet compiled in place (--compile) would ignore hooks added after compilation (dynamo
    does not guard on them) and silently run unmerged; the pass runs it eagerly instead."""
    if is_compiled(unet):
        patch.paused_compile = (unet, unet._compiled_call_impl)
        unet._compiled_call_impl = None


def transformer_blocks(unet: torch.nn.Module) -> list[BasicTransformerBlock]:
    """The UNet's transformer blocks whose self-attention may merge (blocks whose attn1 is
    cross-attention keep their tokens)."""
    return [
        module for module in unet.modules()
        if isinstance(module, BasicTransformerBlock) and not getattr(module, "only_cross_attention", False)
    ]


def apply_token_merging(unet: torch.nn.Module, settings: MergeSettings) -> TokenMergingPatch:
    """Hook ToMe into `unet` (diffusers' UNet2DConditionModel layout); a ratio <= 0 installs
    nothing. The returned patch's `restore()` takes every hook out again."""
    patch = TokenMergingPatch()
    if settings.ratio <= 0:
        return patch
    pause_compiled(unet, patch)
    call = _UNetCall()
    patch.handles.append(unet.register_forward_pre_hook(_latent_size_hook(call), with_kwargs=True))
    for block in transformer_blocks(unet):
        _hook_block(block, call, settings, patch)
        patch.blocks += 1
    return patch


@contextmanager
def token_merging(unet: torch.nn.Module, ratio: float) -> Iterator[TokenMergingPatch]:
    """ToMe with A1111's settings at `ratio` for the duration of the block, removed after,
    even on error."""
    patch = apply_token_merging(unet, MergeSettings(ratio))
    try:
        yield patch
    finally:
        patch.restore()


def _latent_size_hook(call: _UNetCall) -> Any:
    def record(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        call.latent_size = (int(sample.shape[-2]), int(sample.shape[-1]))

    return record


def _hook_block(block: BasicTransformerBlock, call: _UNetCall, settings: MergeSettings,
                patch: TokenMergingPatch) -> None:
    """Four hooks: the block's input decides the merge, attn1's input is merged and its output
    unmerged, and the block's end forgets the merge."""
    state = _BlockCall()

    def plan(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        state.merge = None if call.latent_size is None else block_merge(hidden, call.latent_size, settings)

    def merge_input(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if state.merge is None:
            return None
        if kwargs.get("attention_mask") is not None:  # a mask is per token: leave this call whole
            state.merge = None
            return None
        if args:
            return (state.merge.merge(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": state.merge.merge(kwargs["hidden_states"])}

    def unmerge_output(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return None if state.merge is None else state.merge.unmerge(output)

    def forget(_module: torch.nn.Module, _args: tuple, _output: Any) -> None:
        state.merge = None

    patch.handles += [
        block.register_forward_pre_hook(plan, with_kwargs=True),
        block.attn1.register_forward_pre_hook(merge_input, with_kwargs=True),
        block.attn1.register_forward_hook(unmerge_output),
        block.register_forward_hook(forget),
    ]

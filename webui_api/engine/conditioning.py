"""CLIP text conditioning the way A1111 builds it for SD1: 75-token chunks, clip skip, concat.

A prompt becomes one or more 77-token chunks (BOS + 75 tokens + EOS, padded with EOS); each
chunk index is encoded as a batch, and the per-chunk hidden states are concatenated along
the token axis, giving (B, 77*k, C). Every chunk carries a multiplier per token so that
emphasis ("(word:1.3)") only has to produce weighted fragments: today a prompt is one
fragment of weight 1.0, tokenized plainly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from webui_api.engine.models import LoadedModel

CHUNK_LENGTH = 75  # content tokens per chunk; BOS and EOS make it 77
DEFAULT_COMMA_BACKTRACK = 20  # A1111 option comma_padding_backtrack


@dataclass(frozen=True)
class TokenIds:
    """The special ids chunking needs (SD1 / CLIP-L: pad == EOS)."""

    bos: int
    eos: int
    comma: int | None


@dataclass
class PromptChunk:
    """One 77-token window of a prompt with one emphasis multiplier per token."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class WeightedFragment:
    """A piece of prompt text with its emphasis weight (A1111's attention parser output)."""

    text: str
    weight: float = 1.0


def token_ids(tokenizer) -> TokenIds:
    """BOS/EOS and the comma token ("," at a word end) from the tokenizer's vocabulary."""
    return TokenIds(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, comma=tokenizer.get_vocab().get(",</w>"))


def empty_chunk(ids: TokenIds) -> PromptChunk:
    """BOS + 76 x EOS: the chunk of "" and the filler for prompts with fewer chunks."""
    length = CHUNK_LENGTH + 2
    return PromptChunk(tokens=[ids.bos] + [ids.eos] * (length - 1), multipliers=[1.0] * length)


class _ChunkBuilder:
    """A1111's tokenize_line walk: fill 75-token chunks, moving the words after a recent comma
    to the next chunk when a chunk overflows (comma backtrack)."""

    def __init__(self, ids: TokenIds, comma_backtrack: int) -> None:
        self.ids = ids
        self.backtrack = comma_backtrack
        self.chunks: list[PromptChunk] = []
        self.current = PromptChunk()
        self.last_comma = -1

    def add(self, token: int, weight: float) -> None:
        if token == self.ids.comma:
            self.last_comma = len(self.current.tokens)
        elif self._should_backtrack():
            self._split_at_comma()
        if len(self.current.tokens) == CHUNK_LENGTH:
            self.close()
        self.current.tokens.append(token)
        self.current.multipliers.append(weight)

    def _should_backtrack(self) -> bool:
        full = len(self.current.tokens) == CHUNK_LENGTH
        near = self.last_comma != -1 and CHUNK_LENGTH - self.last_comma <= self.backtrack
        return self.backtrack != 0 and full and near

    def _split_at_comma(self) -> None:
        cut = self.last_comma + 1
        moved_tokens, moved_mults = self.current.tokens[cut:], self.current.multipliers[cut:]
        del self.current.tokens[cut:], self.current.multipliers[cut:]
        self.close()
        self.current.tokens, self.current.multipliers = moved_tokens, moved_mults

    def close(self) -> None:
        """Pad to 75 with EOS, wrap in BOS/EOS, store, start an empty chunk."""
        chunk, pad = self.current, CHUNK_LENGTH - len(self.current.tokens)
        tokens = [self.ids.bos] + chunk.tokens + [self.ids.eos] * pad + [self.ids.eos]
        multipliers = [1.0] + chunk.multipliers + [1.0] * pad + [1.0]
        self.chunks.append(PromptChunk(tokens=tokens, multipliers=multipliers))
        self.current, self.last_comma = PromptChunk(), -1

    def finish(self) -> list[PromptChunk]:
        if self.current.tokens or not self.chunks:
            self.close()
        return self.chunks


def fragments_of(prompt: str) -> list[WeightedFragment]:
    """The prompt as weighted fragments. Emphasis parsing plugs in here (a later issue);
    for now the whole prompt is one fragment of weight 1.0."""
    return [WeightedFragment(prompt, 1.0)]


def tokenize_fragments(tokenizer, fragments: Sequence[WeightedFragment]) -> list[list[int]]:
    """Token ids per fragment, no special tokens, no truncation: BPE never merges across
    fragment boundaries, as in A1111."""
    if not fragments:
        return []
    encoded = tokenizer([f.text for f in fragments], truncation=False, add_special_tokens=False)
    return [list(ids) for ids in encoded["input_ids"]]


def prompt_chunks(
    tokenizer, prompt: str, ids: TokenIds, comma_backtrack: int = DEFAULT_COMMA_BACKTRACK
) -> list[PromptChunk]:
    """Split one prompt into 77-token chunks (at least one)."""
    fragments = fragments_of(prompt)
    builder = _ChunkBuilder(ids, comma_backtrack)
    for fragment, tokens in zip(fragments, tokenize_fragments(tokenizer, fragments)):
        for token in tokens:
            builder.add(token, fragment.weight)
    return builder.finish()


def select_hidden_state(output, final_layer_norm: torch.nn.Module, clip_skip: int) -> torch.Tensor:
    """A1111's clip-skip rule for SD1: 1 -> last_hidden_state (already normed); N > 1 ->
    hidden_states[-N] passed through the final layer norm.

    N is clamped to the encoder's depth so an option that is valid for a 12-layer CLIP does
    not crash a shallower model.
    """
    if clip_skip <= 1:
        return output.last_hidden_state
    hidden_states = output.hidden_states
    skip = min(clip_skip, len(hidden_states))
    return final_layer_norm(hidden_states[-skip])


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each token's vector, then restore the overall mean.

    With all multipliers 1.0 (plain prompts) A1111's arithmetic is exactly the identity, so
    that case returns z untouched (and never divides by a zero mean).
    """
    if bool((multipliers == 1.0).all()):
        return z
    original_mean = z.mean()
    weighted = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
    return weighted * (original_mean / weighted.mean())


def final_layer_norm(encoder) -> torch.nn.Module:
    """The text encoder's final LayerNorm (transformers 4 nests it under `text_model`)."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


def encode_chunk_batch(model: LoadedModel, chunks: Sequence[PromptChunk], clip_skip: int) -> torch.Tensor:
    """Encode one chunk index for every text in the batch: (B, 77, C) in the encoder's dtype."""
    encoder = model.text_encoder
    tokens = torch.tensor([c.tokens for c in chunks], dtype=torch.long, device=model.device)
    output = encoder(input_ids=tokens, output_hidden_states=clip_skip > 1)
    z = select_hidden_state(output, final_layer_norm(encoder), clip_skip)
    multipliers = torch.tensor([c.multipliers for c in chunks], dtype=z.dtype, device=z.device)
    return apply_emphasis(z, multipliers)


def encode_prompt_texts(
    model: LoadedModel, texts: Sequence[str], clip_skip: int = 1, comma_backtrack: int = DEFAULT_COMMA_BACKTRACK
) -> torch.Tensor:
    """Encode texts as one batch (A1111 does this for the schedule variants of one prompt);
    texts with fewer chunks are padded with empty chunks. Returns (B, 77*k, C)."""
    ids = token_ids(model.tokenizer)
    per_text = [prompt_chunks(model.tokenizer, t, ids, comma_backtrack) for t in texts]
    count = max(len(chunks) for chunks in per_text)
    zs = []
    for index in range(count):
        batch = [chunks[index] if index < len(chunks) else empty_chunk(ids) for chunks in per_text]
        zs.append(encode_chunk_batch(model, batch, clip_skip))
    return torch.cat(zs, dim=1)


def pad_to_token_count(z: torch.Tensor, count: int) -> torch.Tensor:
    """Lengthen a (T, C) conditioning to `count` rows by repeating its last row, as A1111's
    stack_conds does when prompts in one batch have different chunk counts."""
    missing = count - z.shape[0]
    if missing <= 0:
        return z
    return torch.cat([z, z[-1:].expand(missing, -1)], dim=0)


def encode_prompts(
    model: LoadedModel, prompts: Sequence[str], clip_skip: int = 1, comma_backtrack: int = DEFAULT_COMMA_BACKTRACK
) -> torch.Tensor:
    """Conditioning for a batch of prompts: (B, 77*k, C).

    Each distinct prompt is encoded on its own (A1111 encodes per prompt, and emphasis
    normalisation depends on what is in the encoded batch); repeated prompts reuse the result.
    """
    if not prompts:
        raise ValueError("encode_prompts needs at least one prompt, got an empty sequence")
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
    cache: dict[str, torch.Tensor] = {}
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = encode_prompt_texts(model, [prompt], clip_skip, comma_backtrack)[0]
    count = max(z.shape[0] for z in cache.values())
    return torch.stack([pad_to_token_count(cache[p], count) for p in prompts])

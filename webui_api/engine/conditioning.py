"""Text conditioning the way A1111 builds it: prompts -> schedules -> 75-token chunks -> CLIP.

For one batch, `build_batch_conditioning` produces the `BatchConditioning` guidance consumes:

1. each positive prompt is split on AND (`prompts.split_subprompts`); negatives are not;
2. each distinct (sub)prompt gets its prompt-editing schedule (`prompts.prompt_schedule`);
3. all schedule variants of that prompt are encoded *as one batch*, because A1111 does and
   the "Original" emphasis restores the mean over the whole (variants, 77, C) batch;
4. every variant text becomes 77-token chunks (BOS + 75 + EOS): emphasis fragments are
   tokenised separately, packed with comma backtracking, closed early by BREAK; chunk i of
   every variant is encoded together, then the chunks are concatenated on the token axis.

Encoders per model family (`text_encoders`):

- SD1: CLIP-L, clip skip N > 1 takes hidden_states[-N] through the final layer norm.
- SD2: OpenCLIP-H in diffusers' layout (the converted encoder already ends at the
  penultimate layer, so last_hidden_state is A1111's choice); clip skip is ignored; every
  token after the first EOS is 0.
- SDXL: CLIP-L hidden_states[-2] without final norm (or hidden_states[-clip_skip] with the
  `sdxl_clip_l_skip` option) concatenated on the channel axis with OpenCLIP-G
  hidden_states[-2]; the pooled G output of chunk 0 (text_projection applied) and the
  size/crop numbers form `CondTensors.vector`:

      vector = [pooled (1280) | original_h, original_w, crop_top, crop_left, target_h, target_w]

  i.e. diffusers' `text_embeds` followed by its raw `add_time_ids` (the UNet embeds them).
  The refiner has only OpenCLIP-G and 5 time ids: [h, w, crop_top, crop_left, aesthetic].
  A negative prompt whose variants are all "" gets zero text outputs (A1111's force-zero).

Outputs are float32 (emphasis is computed in float32, as under A1111's autocast); guidance
casts them to the UNet's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from webui_api.engine.cond_types import BatchConditioning, ComposableCond, CondTensors, ScheduledCond
from webui_api.engine.embeddings import Embedding, EmbeddingStore
from webui_api.engine.models import LoadedModel
from webui_api.engine.prompts import (
    EMPHASIS_MODES,
    WeightedFragment,
    fragments_for_emphasis,
    prompt_schedule,
    split_subprompts,
)
from webui_api.engine_options import EngineOptions
from webui_api.errors import BadRequest

CHUNK_LENGTH = 75  # content tokens per chunk; BOS and EOS make it 77
DEFAULT_COMMA_BACKTRACK = 20  # A1111 option comma_padding_backtrack
SDXL_TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)
REFINER_TIME_IDS = 5  # original (h, w), crop (top, left), aesthetic score
SDXL_DEFAULT_SIZE = 1024  # A1111's size when the batch carries none

__all__ = [
    "CHUNK_LENGTH",
    "DEFAULT_COMMA_BACKTRACK",
    "EMPHASIS_MODES",
    "ConditioningSettings",
    "PromptChunk",
    "TextEncoderSpec",
    "TokenIds",
    "WeightedFragment",
    "added_cond_kwargs",
    "build_batch_conditioning",
    "encode_prompts",
    "prompt_chunks",
    "stack_at_step",
    "text_encoders",
]


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConditioningSettings:
    """The options that change conditioning, resolved once per job."""

    clip_skip: int = 1
    emphasis: str = "Original"
    comma_backtrack: int = DEFAULT_COMMA_BACKTRACK
    sdxl_clip_l_skip: bool = False
    use_old_scheduling: bool = False
    width: int = SDXL_DEFAULT_SIZE
    height: int = SDXL_DEFAULT_SIZE
    crop_top: int = 0
    crop_left: int = 0
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5

    def __post_init__(self) -> None:
        if self.emphasis not in EMPHASIS_MODES:
            raise BadRequest(f"option 'emphasis' must be one of {EMPHASIS_MODES}; received {self.emphasis!r}")
        if self.comma_backtrack < 0:
            raise BadRequest(f"option 'comma_padding_backtrack' must be >= 0; received {self.comma_backtrack}")

    @classmethod
    def from_options(
        cls, options: EngineOptions, clip_skip: int = 1, width: int = 0, height: int = 0
    ) -> ConditioningSettings:
        """The job's prompt options; a size of 0 means "unknown" (A1111 then uses 1024)."""
        return cls(
            clip_skip=int(clip_skip),
            emphasis=options.emphasis,
            comma_backtrack=options.comma_padding_backtrack,
            sdxl_clip_l_skip=options.sdxl_clip_l_skip,
            use_old_scheduling=options.use_old_scheduling,
            width=int(width) or SDXL_DEFAULT_SIZE,
            height=int(height) or SDXL_DEFAULT_SIZE,
            crop_top=options.sdxl_crop_top,
            crop_left=options.sdxl_crop_left,
            aesthetic_score=options.sdxl_refiner_high_aesthetic_score,
            negative_aesthetic_score=options.sdxl_refiner_low_aesthetic_score,
        )


# ---------------------------------------------------------------------------
# Textual inversion: where a prompt names an embedding (embeddings.py loads and indexes them)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingFix:
    """An embedding's vectors replace the placeholder tokens at `offset` (after BOS)."""

    offset: int
    embedding: Embedding


# ---------------------------------------------------------------------------
# Chunks
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenIds:
    """The special ids chunking needs; `pad` fills every position after the first EOS when
    it differs from `eos` (OpenCLIP: 0)."""

    bos: int
    eos: int
    comma: int | None
    pad: int | None = None


@dataclass
class PromptChunk:
    """One 77-token window of a prompt with one emphasis multiplier per token."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[EmbeddingFix] = field(default_factory=list)


def token_ids(tokenizer, pad_with_zero: bool = False) -> TokenIds:
    """BOS/EOS and the comma token ("," at a word end) from the tokenizer's vocabulary."""
    comma = tokenizer.get_vocab().get(",</w>")
    return TokenIds(tokenizer.bos_token_id, tokenizer.eos_token_id, comma, 0 if pad_with_zero else None)


def empty_chunk(ids: TokenIds) -> PromptChunk:
    """BOS + 76 x EOS: the chunk of "" and the filler for prompts with fewer chunks."""
    length = CHUNK_LENGTH + 2
    return PromptChunk(tokens=[ids.bos] + [ids.eos] * (length - 1), multipliers=[1.0] * length)


class _ChunkBuilder:
    """A1111's tokenize_line walk: fill 75-token chunks, moving the words after a recent comma
    to the next chunk when a chunk overflows (comma backtrack), inserting embeddings."""

    def __init__(self, ids: TokenIds, comma_backtrack: int, lookup: EmbeddingStore | None = None) -> None:
        self.ids = ids
        self.backtrack = comma_backtrack
        self.lookup = lookup
        self.chunks: list[PromptChunk] = []
        self.current = PromptChunk()
        self.last_comma = -1

    def add_fragment(self, tokens: Sequence[int], weight: float) -> None:
        """Append one fragment's tokens; embedding names become their vectors' placeholders."""
        position = 0
        while position < len(tokens):
            self._make_room(tokens[position])
            found = self.lookup.match_at(tokens, position) if self.lookup else None
            if found is None:
                self.current.tokens.append(tokens[position])
                self.current.multipliers.append(weight)
                position += 1
            else:
                self._add_embedding(found.embedding, weight)
                position += found.token_count

    def _make_room(self, token: int) -> None:
        if token == self.ids.comma:
            self.last_comma = len(self.current.tokens)
        elif self._should_backtrack():
            self._split_at_comma()
        if len(self.current.tokens) == CHUNK_LENGTH:
            self.close()

    def _add_embedding(self, embedding: Embedding, weight: float) -> None:
        """Placeholders (id 0) for the vectors, in a fresh chunk when they do not fit."""
        count = embedding.vector_count
        if count > CHUNK_LENGTH:
            raise BadRequest(f"embedding {embedding.name!r} has {count} vectors; at most {CHUNK_LENGTH} fit in a chunk")
        if len(self.current.tokens) + count > CHUNK_LENGTH:
            self.close()
        self.current.fixes.append(EmbeddingFix(len(self.current.tokens), embedding))
        self.current.tokens += [0] * count
        self.current.multipliers += [weight] * count

    def _should_backtrack(self) -> bool:
        full = len(self.current.tokens) == CHUNK_LENGTH
        near = self.last_comma != -1 and CHUNK_LENGTH - self.last_comma <= self.backtrack
        return self.backtrack != 0 and full and near

    def _split_at_comma(self) -> None:
        """Close the chunk right after the last comma; what followed starts the next one
        (embedding fixes stay where they are, as in A1111)."""
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
        self.chunks.append(PromptChunk(tokens=tokens, multipliers=multipliers, fixes=chunk.fixes))
        self.current, self.last_comma = PromptChunk(), -1

    def finish(self) -> list[PromptChunk]:
        if self.current.tokens or not self.chunks:
            self.close()
        return self.chunks


def tokenize_fragments(tokenizer, fragments: Sequence[WeightedFragment]) -> list[list[int]]:
    """Token ids per fragment, no special tokens, no truncation: BPE never merges across
    fragment boundaries, as in A1111."""
    if not fragments:
        return []
    encoded = tokenizer([f.text for f in fragments], truncation=False, add_special_tokens=False)
    return [list(ids) for ids in encoded["input_ids"]]


def prompt_chunks(
    tokenizer,
    text: str,
    ids: TokenIds,
    comma_backtrack: int = DEFAULT_COMMA_BACKTRACK,
    emphasis: str = "Original",
    lookup: EmbeddingStore | None = None,
) -> list[PromptChunk]:
    """Split one (schedule variant) text into 77-token chunks (at least one)."""
    fragments = fragments_for_emphasis(text, emphasis)
    builder = _ChunkBuilder(ids, comma_backtrack, lookup)
    for fragment, tokens in zip(fragments, tokenize_fragments(tokenizer, fragments), strict=True):
        if fragment.is_break:
            builder.close()
        else:
            builder.add_fragment(tokens, fragment.weight)
    return builder.finish()


# ---------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------

LAYER_CLIP_SKIP = "clip_skip"  # SD1: last_hidden_state, or hidden_states[-N] + final norm
LAYER_LAST = "last"  # last_hidden_state (SD2 in diffusers' truncated layout)
LAYER_PENULTIMATE = "penultimate"  # hidden_states[-2], no final norm (SDXL)
LAYER_SKIP_NO_NORM = "skip_no_norm"  # hidden_states[-N], no final norm (SDXL CLIP-L with sdxl_clip_l_skip)


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a model and how A1111 reads it."""

    encoder: Any  # transformers CLIPTextModel / CLIPTextModelWithProjection
    tokenizer: Any
    ti_key: str  # the encoder slot whose embedding vectors it takes ("text_encoder" / "text_encoder_2")
    layer: str
    pad_with_zero: bool = False
    pooled: bool = False  # return text_embeds of chunk 0 (SDXL's OpenCLIP-G)


def text_encoders(model: LoadedModel, settings: ConditioningSettings) -> tuple[TextEncoderSpec, ...]:
    """The encoders of the model's family, in the order their outputs are concatenated."""
    family = model.family
    if family == "sd1":
        return (TextEncoderSpec(model.text_encoder, model.tokenizer, "text_encoder", LAYER_CLIP_SKIP),)
    if family == "sd2":
        return (TextEncoderSpec(model.text_encoder, model.tokenizer, "text_encoder", LAYER_LAST, pad_with_zero=True),)
    big_g = TextEncoderSpec(
        model.text_encoder_2, model.tokenizer_2, "text_encoder_2", LAYER_PENULTIMATE, pad_with_zero=True, pooled=True
    )
    if family == "sdxl-refiner":
        return (big_g,)
    if family == "sdxl":
        layer = LAYER_SKIP_NO_NORM if settings.sdxl_clip_l_skip else LAYER_PENULTIMATE
        return (TextEncoderSpec(model.text_encoder, model.tokenizer, "text_encoder", layer), big_g)
    raise ValueError(f"unknown model family {family!r}; expected sd1, sd2, sdxl or sdxl-refiner")


def final_layer_norm(encoder) -> torch.nn.Module:
    """The text encoder's final LayerNorm (CLIPTextModel nests it under `text_model`)."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


def token_embedding(encoder) -> torch.nn.Embedding:
    return getattr(encoder, "text_model", encoder).embeddings.token_embedding


def select_hidden_state(output, spec: TextEncoderSpec, clip_skip: int) -> torch.Tensor:
    """Pick the hidden state A1111 uses for this encoder. A clip skip deeper than the encoder
    is clamped to its embeddings output rather than failing."""
    if spec.layer == LAYER_LAST or (spec.layer == LAYER_CLIP_SKIP and clip_skip <= 1):
        return output.last_hidden_state
    hidden_states = output.hidden_states
    if spec.layer == LAYER_PENULTIMATE:
        return hidden_states[-2]
    skip = min(max(clip_skip, 1), len(hidden_states))
    if spec.layer == LAYER_SKIP_NO_NORM:
        return hidden_states[-skip]
    return final_layer_norm(spec.encoder)(hidden_states[-skip])


def _needs_hidden_states(spec: TextEncoderSpec, clip_skip: int) -> bool:
    return spec.layer in (LAYER_PENULTIMATE, LAYER_SKIP_NO_NORM) or (spec.layer == LAYER_CLIP_SKIP and clip_skip > 1)


def token_tensor(chunks: Sequence[PromptChunk], ids: TokenIds, device: torch.device) -> torch.Tensor:
    """(B, 77) ids; with a pad id, every position after a row's first EOS becomes pad."""
    rows = []
    for chunk in chunks:
        tokens = list(chunk.tokens)
        if ids.pad is not None:
            first_eos = tokens.index(ids.eos)
            tokens[first_eos + 1 :] = [ids.pad] * (len(tokens) - first_eos - 1)
        rows.append(tokens)
    return torch.tensor(rows, dtype=torch.long, device=device)


def _replace_embedding_rows(
    embeds: torch.Tensor, fixes_per_row: Sequence[Sequence[EmbeddingFix]], key: str
) -> torch.Tensor:
    """A1111's EmbeddingsWithFixes: rows offset+1 ... of each text's token embeddings become
    the embedding's vectors (as many as fit before the last position)."""
    rows = []
    for fixes, row in zip(fixes_per_row, embeds, strict=True):
        for fix in fixes:
            vectors = fix.embedding.vectors_for(key).to(device=row.device, dtype=row.dtype)
            count = min(row.shape[0] - fix.offset - 1, vectors.shape[0])
            row = torch.cat([row[: fix.offset + 1], vectors[:count], row[fix.offset + 1 + count :]])
        rows.append(row)
    return torch.stack(rows)


def _run_encoder(spec: TextEncoderSpec, tokens: torch.Tensor, chunks: Sequence[PromptChunk], clip_skip: int):
    """Call the encoder; when the chunks hold embeddings, a forward hook on the token
    embedding layer swaps their vectors in for this call only."""
    fixes = [chunk.fixes for chunk in chunks]
    kwargs = {"input_ids": tokens, "output_hidden_states": _needs_hidden_states(spec, clip_skip)}
    if not any(fixes):
        return spec.encoder(**kwargs)
    hook = token_embedding(spec.encoder).register_forward_hook(
        lambda _module, _inputs, embeds: _replace_embedding_rows(embeds, fixes, spec.ti_key)
    )
    try:
        return spec.encoder(**kwargs)
    finally:
        hook.remove()


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, mode: str = "Original") -> torch.Tensor:
    """Apply per-token multipliers to a (B, 77, C) chunk batch.

    Original: scale, then restore the mean of the whole batch (every variant, every token,
    padding included); No norm: scale only; Ignore / None: untouched. With all multipliers
    1.0 the Original arithmetic is the identity in float32, so it is done literally, except
    that an exactly-zero mean is left alone rather than turned into NaN.
    """
    if mode in ("Ignore", "None"):
        return z
    weighted = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
    if mode == "No norm":
        return weighted
    original_mean, new_mean = z.mean(), weighted.mean()
    if float(new_mean) == 0.0:
        return weighted
    return weighted * (original_mean / new_mean)


@dataclass(frozen=True)
class EncodedChunk:
    """One chunk index encoded for every text: (B, 77, C) and, for the pooled encoder, (B, P)."""

    z: torch.Tensor
    pooled: torch.Tensor | None


def encode_chunk_batch(
    spec: TextEncoderSpec, chunks: Sequence[PromptChunk], ids: TokenIds, settings: ConditioningSettings
) -> EncodedChunk:
    """Encode chunk i of every text in one call and apply emphasis (in float32)."""
    tokens = token_tensor(chunks, ids, token_embedding(spec.encoder).weight.device)
    output = _run_encoder(spec, tokens, chunks, settings.clip_skip)
    z = select_hidden_state(output, spec, settings.clip_skip).float()
    multipliers = torch.tensor([c.multipliers for c in chunks], dtype=torch.float32, device=z.device)
    pooled = output.text_embeds.float() if spec.pooled else None
    return EncodedChunk(z=apply_emphasis(z, multipliers, settings.emphasis), pooled=pooled)


@dataclass(frozen=True)
class EncodedTexts:
    """Texts encoded together: crossattn (B, 77*k, C), pooled (B, P) from chunk 0 or None."""

    crossattn: torch.Tensor
    pooled: torch.Tensor | None


def encode_with(
    spec: TextEncoderSpec,
    texts: Sequence[str],
    settings: ConditioningSettings,
    lookup: EmbeddingStore | None = None,
) -> EncodedTexts:
    """A1111's forward for one encoder: chunk every text, pad short ones with empty chunks,
    encode chunk index by chunk index, concatenate along the token axis."""
    ids = token_ids(spec.tokenizer, spec.pad_with_zero)
    per_text = [
        prompt_chunks(spec.tokenizer, t, ids, settings.comma_backtrack, settings.emphasis, lookup) for t in texts
    ]
    count = max(len(chunks) for chunks in per_text)
    encoded = []
    for index in range(count):
        batch = [chunks[index] if index < len(chunks) else empty_chunk(ids) for chunks in per_text]
        encoded.append(encode_chunk_batch(spec, batch, ids, settings))
    return EncodedTexts(torch.cat([e.z for e in encoded], dim=1), encoded[0].pooled)


# ---------------------------------------------------------------------------
# One prompt's schedule variants -> CondTensors
# ---------------------------------------------------------------------------


def time_ids(model: LoadedModel, settings: ConditioningSettings, negative: bool) -> torch.Tensor:
    """SDXL's size/crop numbers (refiner: with the aesthetic score), rounded through the
    model dtype as A1111 creates them, returned as float32."""
    size = [settings.height, settings.width]
    crop = [settings.crop_top, settings.crop_left]
    if model.family == "sdxl-refiner":
        score = settings.negative_aesthetic_score if negative else settings.aesthetic_score
        values: list[float] = [*size, *crop, score]
    else:
        values = [*size, *crop, *size]
    return torch.tensor(values, dtype=model.dtype).float()


def added_cond_kwargs(vector: torch.Tensor, family: str) -> dict[str, torch.Tensor]:
    """Split a (B, P + n) `CondTensors.vector` batch into diffusers' SDXL UNet inputs
    {"text_embeds": (B, P), "time_ids": (B, n)}."""
    count = REFINER_TIME_IDS if family == "sdxl-refiner" else SDXL_TIME_IDS
    return {"text_embeds": vector[..., :-count], "time_ids": vector[..., -count:]}


@dataclass
class PromptEncoder:
    """Encodes prompts for one batch; each distinct (text, negative) is encoded once."""

    model: LoadedModel
    settings: ConditioningSettings
    embeddings: EmbeddingStore | None = None  # every encoder shares CLIP's BPE ids, so one index serves all
    cache: dict[tuple[str, bool], ScheduledCond] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.specs = text_encoders(self.model, self.settings)

    def scheduled(
        self, prompt: str, steps: int, negative: bool = False, hires_steps: int | None = None
    ) -> ScheduledCond:
        """The prompt's schedule with every variant encoded (cached per text and side)."""
        key = (prompt, negative)
        if key not in self.cache:
            schedule = prompt_schedule(prompt, steps, hires_steps, self.settings.use_old_scheduling)
            tensors = self.encode_variants([entry.text for entry in schedule], negative)
            self.cache[key] = ScheduledCond(
                tuple((entry.end_at_step, t) for entry, t in zip(schedule, tensors, strict=True))
            )
        return self.cache[key]

    def encode_variants(self, texts: Sequence[str], negative: bool) -> list[CondTensors]:
        """All variants as one batch per encoder; SDXL adds the pooled + time-id vector."""
        outputs = [encode_with(spec, texts, self.settings, self.embeddings) for spec in self.specs]
        crossattn = torch.cat([o.crossattn for o in outputs], dim=-1)
        pooled = next((o.pooled for o in outputs if o.pooled is not None), None)
        if negative and pooled is not None and all(text == "" for text in texts):
            crossattn, pooled = torch.zeros_like(crossattn), torch.zeros_like(pooled)
        if pooled is None:
            return [CondTensors(row) for row in crossattn]
        extra = time_ids(self.model, self.settings, negative).to(pooled.device)
        vectors = torch.cat([pooled, extra.expand(len(texts), -1)], dim=1)
        return [CondTensors(row, vector) for row, vector in zip(crossattn, vectors, strict=True)]


def empty_prompt_crossattn(model: LoadedModel, options: EngineOptions, clip_skip: int) -> torch.Tensor:
    """The (77, C) encoding of "" as a positive prompt: A1111's cond_stage_model_empty_prompt,
    which pad_cond_uncond appends to the shorter of cond and uncond."""
    settings = ConditioningSettings.from_options(options, clip_skip)
    return PromptEncoder(model, settings).encode_variants([""], negative=False)[0].crossattn


def build_batch_conditioning(
    model: LoadedModel,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    steps: int,
    clip_skip: int,
    options: EngineOptions,
    *,
    width: int = 0,
    height: int = 0,
    hires_steps: int | None = None,
    embeddings: EmbeddingStore | None = None,
) -> BatchConditioning:
    """Everything guidance needs for one batch: per image, its AND parts (each a schedule of
    encoded variants) with weights, and its negative prompt's schedule.

    `steps` is A1111's total_steps (steps x 2 for second-order samplers); `width`/`height`
    are the image size (SDXL's size conditioning); `embeddings` indexes the textual-inversion
    embeddings a prompt may name (the model's store).
    """
    if not prompts or len(prompts) != len(negative_prompts):
        raise ValueError(
            f"need one negative prompt per prompt; got {len(prompts)} prompts, {len(negative_prompts)} negatives"
        )
    settings = ConditioningSettings.from_options(options, clip_skip, width, height)
    encoder = PromptEncoder(model, settings, embeddings)
    uncond = tuple(encoder.scheduled(p, steps, negative=True, hires_steps=hires_steps) for p in negative_prompts)
    cond = tuple(_composable(encoder, prompt, steps, hires_steps) for prompt in prompts)
    return BatchConditioning(cond=cond, uncond=uncond)


def _composable(encoder: PromptEncoder, prompt: str, steps: int, hires_steps: int | None) -> ComposableCond:
    """One positive prompt: its AND parts, each scheduled and encoded, with their weights."""
    parts = split_subprompts(prompt)
    return ComposableCond(tuple((encoder.scheduled(p.text, steps, hires_steps=hires_steps), p.weight) for p in parts))


# ---------------------------------------------------------------------------
# Tensors for a step
# ---------------------------------------------------------------------------


def pad_to_token_count(z: torch.Tensor, count: int) -> torch.Tensor:
    """Lengthen a (T, C) conditioning to `count` rows by repeating its last row, as A1111's
    stack_conds does when prompts in one batch have different chunk counts."""
    missing = count - z.shape[0]
    if missing <= 0:
        return z
    return torch.cat([z, z[-1:].expand(missing, -1)], dim=0)


def stack_at_step(conds: Sequence[ScheduledCond], step: int) -> CondTensors:
    """A1111's reconstruct_cond_batch: every prompt's variant for denoiser call `step`,
    stacked to (B, T, C) (shorter ones padded with their last vector), vectors to (B, V)."""
    chosen = [cond.at(step) for cond in conds]
    count = max(t.crossattn.shape[0] for t in chosen)
    crossattn = torch.stack([pad_to_token_count(t.crossattn, count) for t in chosen])
    vectors = [t.vector for t in chosen if t.vector is not None]
    if len(vectors) != len(chosen):
        return CondTensors(crossattn)
    return CondTensors(crossattn, torch.stack(vectors))


def encode_prompts(
    model: LoadedModel, prompts: Sequence[str], clip_skip: int = 1, comma_backtrack: int = DEFAULT_COMMA_BACKTRACK
) -> torch.Tensor:
    """Crossattn for a batch of plain prompts (no AND split, no schedule): (B, 77*k, C).

    Emphasis syntax is honoured; each distinct prompt is encoded on its own and repeated
    prompts reuse the result. Used where a fixed conditioning is enough (tests, warm-up).
    """
    if not prompts:
        raise ValueError("encode_prompts needs at least one prompt, got an empty sequence")
    settings = ConditioningSettings(clip_skip=clip_skip, comma_backtrack=comma_backtrack)
    encoder = PromptEncoder(model, settings)
    cache = {p: encoder.encode_variants([p], negative=False)[0].crossattn for p in dict.fromkeys(prompts)}
    count = max(z.shape[0] for z in cache.values())
    return torch.stack([pad_to_token_count(cache[p], count) for p in prompts])

"""Text conditioning on tiny CLIP encoders: chunks, BREAK, emphasis modes, clip skip, prompt
editing variants, AND parts, textual inversion, SD2 padding and SDXL's two encoders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from webui_api.engine.cond_types import CondTensors, ScheduledCond
from webui_api.engine.conditioning import (
    LAYER_LAST,
    ConditioningSettings,
    TextEncoderSpec,
    added_cond_kwargs,
    apply_emphasis,
    build_batch_conditioning,
    empty_chunk,
    encode_prompts,
    encode_with,
    prompt_chunks,
    stack_at_step,
    text_encoders,
    token_ids,
    token_tensor,
)
from webui_api.engine.embeddings import Embedding, EmbeddingMatch, EmbeddingStore
from webui_api.engine_options import EngineOptions
from webui_api.errors import BadRequest

BOS, EOS = 49406, 49407
LONG_PROMPT = " ".join(["cat"] * 100)  # "cat" is one token: 100 tokens -> 2 chunks


def ids_of(model, text):
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def raw_hidden(model, token_rows, clip_skip=1):
    """What the encoder gives for explicit token rows, without any of our processing."""
    out = model.text_encoder(input_ids=torch.tensor(token_rows), output_hidden_states=True)
    if clip_skip == 1:
        return out.last_hidden_state
    return getattr(model.text_encoder, "text_model", model.text_encoder).final_layer_norm(out.hidden_states[-clip_skip])


def chunk_of(model, text):
    tokens = ids_of(model, text)
    return [BOS] + tokens + [EOS] * (76 - len(tokens))


def settings(**kwargs):
    return ConditioningSettings(**kwargs)


def spec(model):
    return text_encoders(model, settings())[0]


# --------------------------------------------------------------------------- chunks


def test_chunk_layout_bos_content_eos_padding(tiny_model):
    chunks = prompt_chunks(tiny_model.tokenizer, "a photo of a cat", token_ids(tiny_model.tokenizer))
    assert len(chunks) == 1
    assert chunks[0].tokens == [BOS, 320, 1125, 539, 320, 2368, EOS] + [EOS] * 70
    assert chunks[0].multipliers == [1.0] * 77


def test_empty_prompt_is_one_padding_chunk(tiny_model):
    ids = token_ids(tiny_model.tokenizer)
    chunks = prompt_chunks(tiny_model.tokenizer, "", ids)
    assert [c.tokens for c in chunks] == [empty_chunk(ids).tokens] == [[BOS] + [EOS] * 76]


@pytest.mark.parametrize(
    "prompt, counts",
    [
        (" ".join(["cat"] * 75), [75]),
        (" ".join(["cat"] * 76), [75, 1]),
        (" ".join(["cat"] * 150), [75, 75]),
        (" ".join(["cat"] * 151), [75, 75, 1]),
        ("cat BREAK cat", [1, 1]),
        ("BREAK cat", [0, 1]),  # BREAK closes even an empty chunk
        ("cat BREAK", [1]),
        ("cat BREAK BREAK cat", [1, 0, 1]),
        ("(cat BREAK cat)", [3]),  # inside brackets BREAK is the literal word
        (" ".join(["cat"] * 70) + " BREAK cat", [70, 1]),
    ],
)
def test_chunk_counts(tiny_model, prompt, counts):
    cat = ids_of(tiny_model, "cat")[0]
    chunks = prompt_chunks(tiny_model.tokenizer, prompt, token_ids(tiny_model.tokenizer))
    assert [len(c.tokens) for c in chunks] == [77] * len(counts)
    assert [sum(t not in (BOS, EOS) for t in c.tokens) for c in chunks] == counts
    assert all(c.tokens.count(cat) <= 75 for c in chunks)


def test_break_with_emphasis_none_is_text(tiny_model):
    chunks = prompt_chunks(tiny_model.tokenizer, "cat BREAK cat", token_ids(tiny_model.tokenizer), emphasis="None")
    assert len(chunks) == 1 and ids_of(tiny_model, "BREAK")[0] in chunks[0].tokens


def test_comma_backtrack_moves_the_tail_to_the_next_chunk(tiny_model):
    ids = token_ids(tiny_model.tokenizer)
    # 70 words, a comma (position 70), then 10 words: the chunk overflows 4 tokens after the
    # comma, so the 4 words after it move to chunk 2 (75 - 70 <= 20).
    prompt = " ".join(["cat"] * 70) + " , " + " ".join(["dog"] * 10)
    dog = ids_of(tiny_model, "dog")[0]
    chunks = prompt_chunks(tiny_model.tokenizer, prompt, ids)
    assert [c.tokens.count(dog) for c in chunks] == [0, 10]
    assert chunks[0].tokens[71] == ids.comma and chunks[0].tokens[72:] == [EOS] * 5
    without = prompt_chunks(tiny_model.tokenizer, prompt, ids, comma_backtrack=0)
    assert [c.tokens.count(dog) for c in without] == [4, 6]
    far = prompt_chunks(tiny_model.tokenizer, prompt, ids, comma_backtrack=4)  # 75 - 70 > 4
    assert [c.tokens.count(dog) for c in far] == [4, 6]


def test_multipliers_follow_fragments(tiny_model):
    chunk = prompt_chunks(tiny_model.tokenizer, "a (cat:1.5) [dog]", token_ids(tiny_model.tokenizer))[0]
    assert chunk.multipliers[:5] == [1.0, 1.0, 1.5, pytest.approx(1 / 1.1), 1.0]


# --------------------------------------------------------------------------- encoding and emphasis


def test_plain_prompt_is_the_encoder_output(tiny_model):
    z = encode_prompts(tiny_model, ["a photo of a cat"])
    assert z.shape == (1, 77, 32) and z.dtype == torch.float32
    assert torch.equal(z[0], raw_hidden(tiny_model, [chunk_of(tiny_model, "a photo of a cat")])[0])


def test_long_prompt_concatenates_chunks(tiny_model):
    z = encode_prompts(tiny_model, [LONG_PROMPT])
    assert z.shape == (1, 154, 32)
    second = raw_hidden(tiny_model, [chunk_of(tiny_model, " ".join(["cat"] * 25))])[0]
    assert torch.equal(z[0, 77:], second)


def test_original_emphasis_restores_the_mean(tiny_model):
    weighted = encode_prompts(tiny_model, ["a (cat:1.5)"])[0]
    z = raw_hidden(tiny_model, [chunk_of(tiny_model, "a cat")])
    w = torch.ones(1, 77)
    w[0, 2] = 1.5
    scaled = z * w[..., None]
    expected = scaled * (z.mean() / scaled.mean())
    assert torch.allclose(weighted, expected[0], atol=1e-6)
    assert torch.allclose(weighted.mean(), z.mean(), atol=1e-6)


def test_emphasis_modes(tiny_model):
    encoder = spec(tiny_model)
    z = raw_hidden(tiny_model, [chunk_of(tiny_model, "a cat")])[0]
    w = torch.ones(77, 1)
    w[2] = 1.5
    plain = encode_with(encoder, ["a cat"], settings()).crossattn[0]

    def encode(mode):
        return encode_with(encoder, ["a (cat:1.5)"], settings(emphasis=mode)).crossattn[0]

    assert torch.allclose(encode("No norm"), z * w, atol=1e-6)
    assert torch.equal(encode("Ignore"), plain)  # brackets removed, weights not applied
    assert encode("None").shape == plain.shape and not torch.allclose(encode("None"), plain)  # literal brackets
    assert not torch.allclose(encode("Original"), encode("No norm"))


def test_apply_emphasis_identity_and_zero_mean():
    z = torch.randn(2, 77, 8) + 0.5
    assert torch.equal(apply_emphasis(z, torch.ones(2, 77)), z)
    zero = torch.zeros(1, 77, 4)
    assert torch.equal(apply_emphasis(zero, torch.full((1, 77), 2.0)), zero)


def test_mean_restore_spans_all_schedule_variants(tiny_model):
    """A1111 encodes a prompt's variants as one batch, so "a (cat:1.3)" inside an edit is not
    the same tensor as "a (cat:1.3)" alone."""
    cond = build_batch_conditioning(tiny_model, ["a [(cat:1.3):dog:2]"], [""], 4, 1, EngineOptions())
    first = cond.cond[0].parts[0][0].variants[0][1].crossattn
    alone = encode_prompts(tiny_model, ["a (cat:1.3)"])[0]
    z = raw_hidden(tiny_model, [chunk_of(tiny_model, "a cat"), chunk_of(tiny_model, "a dog")])
    w = torch.ones(2, 77)
    w[0, 2] = 1.3
    scaled = z * w[..., None]
    expected = scaled * (z.mean() / scaled.mean())
    assert torch.allclose(first, expected[0], atol=1e-6)
    assert not torch.allclose(first, alone, atol=1e-6)


def test_clip_skip_two_is_penultimate_layer_through_final_norm(tiny_model):
    got = encode_prompts(tiny_model, ["a cat"], clip_skip=2)[0]
    assert torch.allclose(got, raw_hidden(tiny_model, [chunk_of(tiny_model, "a cat")], clip_skip=2)[0], atol=1e-6)
    assert not torch.allclose(got, encode_prompts(tiny_model, ["a cat"])[0])


def test_clip_skip_beyond_depth_is_clamped_and_below_one_is_one(tiny_model):
    assert torch.equal(
        encode_prompts(tiny_model, ["a cat"], clip_skip=12), encode_prompts(tiny_model, ["a cat"], clip_skip=3)
    )
    assert torch.equal(
        encode_prompts(tiny_model, ["a cat"], clip_skip=0), encode_prompts(tiny_model, ["a cat"], clip_skip=1)
    )


def test_batch_rows_equal_prompts_encoded_alone(tiny_model):
    batch = encode_prompts(tiny_model, ["a cat", "a dog", "a cat"])
    assert torch.equal(batch[1], encode_prompts(tiny_model, ["a dog"])[0])
    assert torch.equal(batch[0], batch[2]) and not torch.equal(batch[0], batch[1])


def test_mixed_lengths_pad_by_repeating_the_last_vector(tiny_model):
    z = encode_prompts(tiny_model, ["a cat", LONG_PROMPT])
    short = encode_prompts(tiny_model, ["a cat"])[0]
    assert z.shape == (2, 154, 32)
    assert torch.equal(z[0, :77], short) and torch.equal(z[0, 77:], short[-1:].expand(77, -1))


# --------------------------------------------------------------------------- schedules, AND, batches


def test_embedding_changes_at_the_editing_step_and_not_elsewhere(tiny_model):
    batch = build_batch_conditioning(tiny_model, ["a [cat:dog:2] photo"], ["blurry"], 4, 1, EngineOptions())
    schedule = batch.cond[0].parts[0][0]
    assert [end for end, _ in schedule.variants] == [2, 4]
    calls = [schedule.at(step).crossattn for step in range(6)]
    assert all(torch.equal(calls[0], calls[k]) for k in (1, 2))  # calls 0..2 use "cat" (3 calls)
    assert torch.equal(calls[3], calls[4]) and not torch.equal(calls[2], calls[3])
    assert torch.equal(calls[5], calls[0])  # past the end: A1111 falls back to the first entry
    pair = encode_with(spec(tiny_model), ["a cat photo", "a dog photo"], settings()).crossattn
    assert torch.equal(calls[0], pair[0]) and torch.equal(calls[3], pair[1])
    assert len(batch.uncond[0].variants) == 1


def test_second_order_steps_move_the_switch(tiny_model):
    schedule = build_batch_conditioning(tiny_model, ["[cat:dog:0.5]"], [""], 8, 1, EngineOptions()).cond[0].parts[0][0]
    assert [end for end, _ in schedule.variants] == [4, 8]


def test_alternation_alternates_per_call(tiny_model):
    schedule = build_batch_conditioning(tiny_model, ["[cat|dog]"], [""], 4, 1, EngineOptions()).cond[0].parts[0][0]
    picks = [schedule.at(step).crossattn for step in range(5)]
    assert torch.equal(picks[0], picks[1]) and torch.equal(picks[1], picks[3])  # a, a, b, a, b
    assert torch.equal(picks[2], picks[4]) and not torch.equal(picks[1], picks[2])


def test_and_parts_and_weights(tiny_model):
    batch = build_batch_conditioning(tiny_model, ["a cat AND a dog:0.5", "a cat"], ["", ""], 4, 1, EngineOptions())
    parts = batch.cond[0].parts
    assert [w for _, w in parts] == [1.0, 0.5]
    assert parts[0][0] is batch.cond[1].parts[0][0]  # the same text is encoded once
    alone = encode_prompts(tiny_model, [" a dog"])[0]
    assert torch.equal(parts[1][0].at(0).crossattn, alone)


def test_negative_prompts_are_not_split_on_and(tiny_model):
    batch = build_batch_conditioning(tiny_model, ["x"], ["a AND b"], 4, 1, EngineOptions())
    assert torch.equal(batch.uncond[0].at(0).crossattn, encode_prompts(tiny_model, ["a AND b"])[0])


def test_old_scheduling_option(tiny_model):
    new = build_batch_conditioning(tiny_model, ["[cat:dog:1.0]"], [""], 4, 1, EngineOptions())
    old = build_batch_conditioning(tiny_model, ["[cat:dog:1.0]"], [""], 4, 1, EngineOptions(use_old_scheduling=True))
    assert [e for e, _ in new.cond[0].parts[0][0].variants] == [4]
    assert [e for e, _ in old.cond[0].parts[0][0].variants] == [1, 4]


def test_stack_at_step_pads_and_picks():
    short = ScheduledCond(((1, CondTensors(torch.ones(2, 3))), (4, CondTensors(torch.full((2, 3), 2.0)))))
    long = ScheduledCond(((4, CondTensors(torch.arange(12.0).reshape(4, 3))),))
    stacked = stack_at_step([short, long], 2).crossattn
    assert stacked.shape == (2, 4, 3)
    assert torch.equal(stacked[0], torch.full((4, 3), 2.0))
    assert torch.equal(stack_at_step([short], 1).crossattn[0], torch.ones(2, 3))


def test_bad_inputs_are_rejected(tiny_model):
    with pytest.raises(BadRequest):
        build_batch_conditioning(tiny_model, ["x"], [""], 4, 1, EngineOptions(emphasis="Strong"))
    with pytest.raises(ValueError):
        build_batch_conditioning(tiny_model, ["x", "y"], [""], 4, 1, EngineOptions())
    with pytest.raises(BadRequest):
        build_batch_conditioning(tiny_model, ["(x:1.1.1)"], [""], 4, 1, EngineOptions())


# --------------------------------------------------------------------------- textual inversion


def token_rows(model, words):
    embedding = getattr(model.text_encoder, "text_model", model.text_encoder).embeddings.token_embedding.weight
    return torch.stack([embedding[ids_of(model, w)[0]] for w in words]).detach().clone()


def embedding(name, vectors):
    return Embedding(name, {"text_encoder": vectors})


def store_of(model, *embeddings):
    return EmbeddingStore.build(embeddings, {}, model.tokenizer)


def test_embedding_vectors_replace_their_name(tiny_model):
    """An embedding whose vectors are the token vectors of "dog house" must encode exactly
    like those words."""
    emb = embedding("zzqx", token_rows(tiny_model, ["dog", "house"]))
    store = store_of(tiny_model, emb)
    z = (
        build_batch_conditioning(tiny_model, ["a zzqx cat"], [""], 4, 1, EngineOptions(), embeddings=store)
        .cond[0]
        .parts[0][0]
    )
    assert torch.allclose(z.at(0).crossattn, encode_prompts(tiny_model, ["a dog house cat"])[0], atol=1e-6)
    chunk = prompt_chunks(tiny_model.tokenizer, "a zzqx cat", token_ids(tiny_model.tokenizer), lookup=store)[0]
    assert chunk.tokens[:5] == [BOS, 320, 0, 0, 2368] and chunk.fixes[0].offset == 1


def test_embedding_lookup_prefers_the_longest_name(tiny_model):
    short, long = embedding("red", torch.zeros(1, 32)), embedding("red car", torch.zeros(2, 32))
    lookup = store_of(tiny_model, short, long)
    tokens = ids_of(tiny_model, "red car red")
    assert lookup.match_at(tokens, 0) == EmbeddingMatch(long, 2)
    assert lookup.match_at(tokens, 2) == EmbeddingMatch(short, 1)
    assert lookup.match_at(tokens, 1) is None


def test_embedding_that_does_not_fit_starts_a_new_chunk(tiny_model):
    lookup = store_of(tiny_model, embedding("zzqx", torch.zeros(3, 32)))
    prompt = " ".join(["cat"] * 73) + " zzqx"
    chunks = prompt_chunks(tiny_model.tokenizer, prompt, token_ids(tiny_model.tokenizer), lookup=lookup)
    assert len(chunks) == 2 and chunks[1].tokens[1:4] == [0, 0, 0] and chunks[1].fixes[0].offset == 0


def test_sdxl_embedding_file_picks_vectors_per_encoder():
    emb = Embedding("x", {"text_encoder": torch.zeros(2, 4), "text_encoder_2": torch.ones(3, 6)})
    assert emb.vector_count == 3 and emb.vectors_for("text_encoder_2").shape == (3, 6)
    with pytest.raises(KeyError):
        emb.vectors_for("text_encoder_3")


# --------------------------------------------------------------------------- SD2 and SDXL


def test_sd2_pads_with_zero_after_the_first_eos_and_ignores_clip_skip(tiny_model):
    sd2 = dataclasses.replace(tiny_model, family="sd2")
    encoder = text_encoders(sd2, settings())[0]
    assert encoder.pad_with_zero and encoder.layer == LAYER_LAST
    chunk = prompt_chunks(sd2.tokenizer, "a cat", token_ids(sd2.tokenizer, pad_with_zero=True))[0]
    row = token_tensor([chunk], token_ids(sd2.tokenizer, pad_with_zero=True), torch.device("cpu"))[0].tolist()
    assert row[:4] == [BOS, 320, 2368, EOS] and row[4:] == [0] * 73
    z = encode_prompts(sd2, ["a cat"], clip_skip=2)[0]
    out = tiny_model.text_encoder(input_ids=torch.tensor([row]))
    assert torch.equal(z, out.last_hidden_state[0])


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_model):
    """SDXL-shaped: CLIP-L (32 wide) + OpenCLIP-G with projection (48 wide, 40-d pooled)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=48,
        intermediate_size=96,
        projection_dim=40,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        big_g = CLIPTextModelWithProjection(config).eval().requires_grad_(False)
    return dataclasses.replace(tiny_model, family="sdxl", text_encoder_2=big_g, tokenizer_2=tiny_model.tokenizer)


def g_outputs(model, text):
    tokens = chunk_of(model, text)
    first_eos = tokens.index(EOS)
    tokens = tokens[: first_eos + 1] + [0] * (76 - first_eos)
    return model.text_encoder_2(input_ids=torch.tensor([tokens]), output_hidden_states=True)


def test_sdxl_crossattn_concatenates_both_penultimate_layers(tiny_sdxl):
    batch = build_batch_conditioning(tiny_sdxl, ["a cat"], ["blurry"], 4, 1, EngineOptions(), width=832, height=1216)
    tensors = batch.cond[0].parts[0][0].at(0)
    assert tensors.crossattn.shape == (77, 32 + 48)
    l_out = tiny_sdxl.text_encoder(input_ids=torch.tensor([chunk_of(tiny_sdxl, "a cat")]), output_hidden_states=True)
    g_out = g_outputs(tiny_sdxl, "a cat")
    assert torch.allclose(tensors.crossattn[:, :32], l_out.hidden_states[-2][0], atol=1e-6)
    assert torch.allclose(tensors.crossattn[:, 32:], g_out.hidden_states[-2][0], atol=1e-6)
    assert tensors.vector.shape == (40 + 6,)
    assert torch.allclose(tensors.vector[:40], g_out.text_embeds[0], atol=1e-6)
    assert tensors.vector[40:].tolist() == [1216, 832, 0, 0, 1216, 832]
    split = added_cond_kwargs(tensors.vector[None], "sdxl")
    assert split["text_embeds"].shape == (1, 40) and split["time_ids"].shape == (1, 6)


def test_sdxl_pooled_comes_from_the_first_chunk_and_ignores_emphasis(tiny_sdxl):
    long = (
        build_batch_conditioning(tiny_sdxl, ["(a cat:1.4) " + LONG_PROMPT], [""], 4, 1, EngineOptions())
        .cond[0]
        .parts[0][0]
        .at(0)
    )
    plain = (
        build_batch_conditioning(tiny_sdxl, ["a cat " + LONG_PROMPT], [""], 4, 1, EngineOptions())
        .cond[0]
        .parts[0][0]
        .at(0)
    )
    assert long.crossattn.shape == (154, 80)
    assert torch.equal(long.vector, plain.vector)
    assert not torch.equal(long.crossattn, plain.crossattn)


def test_sdxl_empty_negative_prompt_is_zeroed_but_keeps_size(tiny_sdxl):
    options = EngineOptions(sdxl_crop_top=16, sdxl_crop_left=8)
    batch = build_batch_conditioning(tiny_sdxl, [""], ["", "x"][:1], 4, 1, options, width=1024, height=768)
    uncond = batch.uncond[0].at(0)
    assert not uncond.crossattn.any() and not uncond.vector[:40].any()
    assert uncond.vector[40:].tolist() == [768, 1024, 16, 8, 768, 1024]
    assert batch.cond[0].parts[0][0].at(0).crossattn.any()  # an empty *positive* prompt is encoded
    other = build_batch_conditioning(tiny_sdxl, ["x"], ["blurry"], 4, 1, EngineOptions())
    assert other.uncond[0].at(0).crossattn.any()


def test_sdxl_clip_l_skip_option(tiny_sdxl):
    on = (
        build_batch_conditioning(tiny_sdxl, ["a cat"], [""], 4, 1, EngineOptions(sdxl_clip_l_skip=True))
        .cond[0]
        .parts[0][0]
        .at(0)
    )
    l_out = tiny_sdxl.text_encoder(input_ids=torch.tensor([chunk_of(tiny_sdxl, "a cat")]), output_hidden_states=True)
    assert torch.allclose(on.crossattn[:, :32], l_out.hidden_states[-1][0], atol=1e-6)  # no final norm
    skip2 = build_batch_conditioning(tiny_sdxl, ["a cat"], [""], 4, 2, EngineOptions()).cond[0].parts[0][0].at(0)
    plain = build_batch_conditioning(tiny_sdxl, ["a cat"], [""], 4, 1, EngineOptions()).cond[0].parts[0][0].at(0)
    assert torch.equal(skip2.crossattn, plain.crossattn)  # clip skip alone does not touch SDXL


def test_sdxl_refiner_uses_only_g_and_aesthetic_scores(tiny_sdxl):
    refiner = dataclasses.replace(tiny_sdxl, family="sdxl-refiner", text_encoder=None, tokenizer=None)
    batch = build_batch_conditioning(refiner, ["a cat"], ["blurry"], 4, 1, EngineOptions(), width=512, height=512)
    cond, uncond = batch.cond[0].parts[0][0].at(0), batch.uncond[0].at(0)
    assert cond.crossattn.shape == (77, 48) and cond.vector.shape == (45,)
    assert cond.vector[40:].tolist() == [512, 512, 0, 0, 6.0]
    assert uncond.vector[40:].tolist() == [512, 512, 0, 0, 2.5]
    assert added_cond_kwargs(cond.vector[None], "sdxl-refiner")["time_ids"].shape == (1, 5)


def test_unknown_family_is_an_error(tiny_model):
    with pytest.raises(ValueError):
        text_encoders(dataclasses.replace(tiny_model, family="sd3"), settings())


def test_encoder_spec_is_plain_data(tiny_model):
    assert isinstance(spec(tiny_model), TextEncoderSpec) and spec(tiny_model).ti_key == "text_encoder"

"""CLIP conditioning: 75-token chunks, comma backtrack, clip skip, batching."""

from __future__ import annotations

import torch

from webui_api.engine.conditioning import (
    apply_emphasis,
    empty_chunk,
    encode_prompt_texts,
    encode_prompts,
    prompt_chunks,
    token_ids,
)

LONG_PROMPT = " ".join(["cat"] * 100)  # "cat" is one token: 100 tokens -> 2 chunks


def test_single_chunk_shape(tiny_model):
    z = encode_prompts(tiny_model, ["a photo of a cat"])
    assert z.shape == (1, 77, 32)
    assert torch.isfinite(z).all()


def test_long_prompt_gives_two_chunks(tiny_model):
    z = encode_prompts(tiny_model, [LONG_PROMPT])
    assert z.shape == (1, 154, 32)


def test_chunk_layout_bos_content_eos_padding(tiny_model):
    ids = token_ids(tiny_model.tokenizer)
    chunks = prompt_chunks(tiny_model.tokenizer, "a photo of a cat", ids)
    assert len(chunks) == 1
    tokens = chunks[0].tokens
    assert len(tokens) == 77 and len(chunks[0].multipliers) == 77
    assert tokens[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokens[7:] == [49407] * 70


def test_empty_prompt_is_one_padding_chunk(tiny_model):
    ids = token_ids(tiny_model.tokenizer)
    chunks = prompt_chunks(tiny_model.tokenizer, "", ids)
    assert [c.tokens for c in chunks] == [empty_chunk(ids).tokens]
    assert chunks[0].tokens == [49406] + [49407] * 76


def test_long_prompt_splits_at_75_tokens(tiny_model):
    ids = token_ids(tiny_model.tokenizer)
    chunks = prompt_chunks(tiny_model.tokenizer, LONG_PROMPT, ids)
    cat = tiny_model.tokenizer("cat", add_special_tokens=False).input_ids[0]
    assert [c.tokens.count(cat) for c in chunks] == [75, 25]


def test_comma_backtrack_moves_the_tail_to_the_next_chunk(tiny_model):
    ids = token_ids(tiny_model.tokenizer)
    # 70 words, a comma (position 70), then 10 words: the chunk overflows 4 tokens after the
    # comma, so the 4 words after it move to chunk 2 (75 - 70 <= 20).
    prompt = " ".join(["cat"] * 70) + " , " + " ".join(["dog"] * 10)
    chunks = prompt_chunks(tiny_model.tokenizer, prompt, ids)
    dog = tiny_model.tokenizer("dog", add_special_tokens=False).input_ids[0]
    assert [c.tokens.count(dog) for c in chunks] == [0, 10]
    assert chunks[0].tokens[71] == ids.comma and chunks[0].tokens[72:] == [49407] * 5
    without = prompt_chunks(tiny_model.tokenizer, prompt, ids, comma_backtrack=0)
    assert [c.tokens.count(dog) for c in without] == [4, 6]


def test_clip_skip_two_differs_from_one(tiny_model):
    one = encode_prompts(tiny_model, ["a photo of a cat"], clip_skip=1)
    two = encode_prompts(tiny_model, ["a photo of a cat"], clip_skip=2)
    assert one.shape == two.shape
    assert not torch.allclose(one, two)


def test_clip_skip_two_is_penultimate_layer_through_final_norm(tiny_model):
    tokens = torch.tensor([[49406, 320, 2368] + [49407] * 74])
    out = tiny_model.text_encoder(input_ids=tokens, output_hidden_states=True)
    expected = tiny_model.text_encoder.final_layer_norm(out.hidden_states[-2])
    got = encode_prompt_texts(tiny_model, ["a cat"], clip_skip=2)
    assert torch.allclose(got, expected, atol=1e-6)


def test_clip_skip_beyond_depth_is_clamped(tiny_model):
    deep = encode_prompts(tiny_model, ["a cat"], clip_skip=12)
    deepest = encode_prompts(tiny_model, ["a cat"], clip_skip=3)  # 2 layers: 3 hidden states
    assert torch.equal(deep, deepest)


def test_batch_rows_equal_prompts_encoded_alone(tiny_model):
    batch = encode_prompts(tiny_model, ["a cat", "a dog", "a cat"])
    alone = encode_prompts(tiny_model, ["a dog"])
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(batch[0], batch[2])
    assert not torch.equal(batch[0], batch[1])


def test_mixed_lengths_pad_by_repeating_the_last_vector(tiny_model):
    z = encode_prompts(tiny_model, ["a cat", LONG_PROMPT])
    assert z.shape == (2, 154, 32)
    short = encode_prompts(tiny_model, ["a cat"])[0]
    assert torch.equal(z[0, :77], short)
    assert torch.equal(z[0, 77:], short[-1:].expand(77, -1))


def test_emphasis_keeps_mean_and_is_identity_for_ones():
    z = torch.randn(2, 77, 8) + 0.5
    assert torch.equal(apply_emphasis(z, torch.ones(2, 77)), z)
    weights = torch.ones(2, 77)
    weights[0, 3] = 1.5
    emphasised = apply_emphasis(z, weights)
    assert torch.allclose(emphasised.mean(), z.mean(), atol=1e-6)
    assert not torch.allclose(emphasised, z)

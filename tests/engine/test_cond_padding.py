"""A1111's pad_cond_uncond / pad_cond_uncond_v0 and batch_cond_uncond in the CFG denoiser,
checked against hand-built expectations on the tiny model."""

from __future__ import annotations

import pytest
import torch

from tests.engine.test_engine_denoiser import RecordingInner, _x_sigma
from webui_api.engine.conditioning import empty_prompt_crossattn, encode_prompts
from webui_api.engine.denoiser import CFGDenoiser, CompVisDenoiser, CondBatch, GuidanceOptions, pad_cond_pair
from webui_api.engine_options import EngineOptions
from webui_api.progress import CancelToken


@pytest.fixture(scope="module")
def texts(tiny_model):
    with torch.inference_mode():
        long_text = ", ".join(["a red cat"] * 30)  # more than 75 tokens: two chunks
        return {
            "cat": encode_prompts(tiny_model, ["a cat"]),
            "long": encode_prompts(tiny_model, [long_text]),
            "neg": encode_prompts(tiny_model, ["blurry"]),
            "empty": empty_prompt_crossattn(tiny_model, EngineOptions(), 1),
        }


def test_empty_prompt_is_the_encoding_of_nothing(tiny_model, texts):
    assert texts["empty"].shape == (77, texts["cat"].shape[-1])
    assert torch.equal(texts["empty"], encode_prompts(tiny_model, [""])[0])
    assert texts["long"].shape[1] == 154


def test_pad_cond_uncond_appends_empty_chunks_to_the_shorter_side(texts):
    opts = GuidanceOptions(pad_cond_uncond=True, empty_crossattn=texts["empty"])
    cond, uncond = pad_cond_pair(CondBatch(texts["long"]), CondBatch(texts["neg"], uncond_rows=1), opts)
    assert torch.equal(cond.crossattn, texts["long"])
    assert torch.equal(uncond.crossattn, torch.cat([texts["neg"], texts["empty"][None]], dim=1))
    assert uncond.uncond_rows == 1
    cond, uncond = pad_cond_pair(CondBatch(texts["neg"]), CondBatch(texts["long"]), opts)
    assert torch.equal(cond.crossattn, torch.cat([texts["neg"], texts["empty"][None]], dim=1))
    assert torch.equal(uncond.crossattn, texts["long"])


def test_pad_cond_uncond_v0_repeats_the_last_vector_or_cuts(texts):
    opts = GuidanceOptions(pad_cond_uncond_v0=True, pad_cond_uncond=True)  # v0 wins, needs no empty prompt
    neg = texts["neg"]
    _, uncond = pad_cond_pair(CondBatch(texts["long"]), CondBatch(neg), opts)
    assert torch.equal(uncond.crossattn, torch.cat([neg, neg[:, -1:].expand(1, 77, -1)], dim=1))
    cond, uncond = pad_cond_pair(CondBatch(neg), CondBatch(texts["long"]), opts)
    assert torch.equal(cond.crossattn, neg)  # the cond is never touched by v0
    assert torch.equal(uncond.crossattn, texts["long"][:, :77])


def test_no_padding_option_keeps_the_lengths(texts):
    cond, uncond = pad_cond_pair(CondBatch(texts["long"]), CondBatch(texts["neg"]), GuidanceOptions())
    assert (cond.tokens, uncond.tokens) == (154, 77)
    with pytest.raises(ValueError, match="empty_crossattn"):
        GuidanceOptions(pad_cond_uncond=True)


@torch.inference_mode()
@pytest.mark.parametrize("v0", [False, True])
def test_padded_guidance_runs_one_unet_call_with_the_padded_uncond(tiny_model, texts, v0):
    inner = CompVisDenoiser(tiny_model)
    recorder = RecordingInner(inner)
    x, sigma = _x_sigma()
    opts = GuidanceOptions(pad_cond_uncond=not v0, pad_cond_uncond_v0=v0, empty_crossattn=texts["empty"])
    out = CFGDenoiser(recorder, CancelToken(), opts)(x, sigma, cond=texts["long"], uncond=texts["neg"], cond_scale=6.0)
    neg = texts["neg"]
    tail = neg[:, -1:].expand(1, 77, -1) if v0 else texts["empty"][None]
    padded = torch.cat([neg, tail], dim=1)
    assert [call[0] for call in recorder.calls] == [2]  # cond and uncond share one call
    c, u = inner(x, sigma, texts["long"]), inner(x, sigma, padded)
    assert torch.allclose(out, u + (c - u) * 6.0, atol=1e-4)
    unpadded = inner(x, sigma, neg)
    assert not torch.allclose(u, unpadded, atol=1e-4)  # the padding really changes the uncond


@torch.inference_mode()
def test_batch_cond_uncond_off_runs_image_sized_calls_with_equal_results(tiny_model, texts):
    inner = CompVisDenoiser(tiny_model)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 3.0
    sigma = torch.tensor([3.0, 3.0])
    cond = torch.cat([texts["cat"], texts["neg"]])
    uncond = torch.cat([texts["neg"], texts["cat"]])
    batched = RecordingInner(inner)
    together = CFGDenoiser(batched, CancelToken())(x, sigma, cond=cond, uncond=uncond, cond_scale=7.0)
    split = RecordingInner(inner)
    separate = CFGDenoiser(split, CancelToken(), GuidanceOptions(batch_cond_uncond=False))(
        x, sigma, cond=cond, uncond=uncond, cond_scale=7.0
    )
    assert [c[0] for c in batched.calls] == [4]
    assert [c[0] for c in split.calls] == [2, 2]
    assert torch.equal(split.calls[0][1], cond) and torch.equal(split.calls[1][1], uncond)
    assert torch.allclose(together, separate, atol=1e-4)  # float noise only (CFG 7 amplifies it)


def test_cond_batch_rows_count_the_uncond_rows_inside():
    batch = CondBatch(torch.zeros(4, 77, 8), torch.zeros(4, 3), uncond_rows=2)
    assert [batch.rows(a, a + 2).uncond_rows for a in (0, 2)] == [0, 2]
    assert batch.rows(1, 3).uncond_rows == 1 and batch.rows(1, 3).vector.shape == (2, 3)


def _image(tiny_model, options):
    import numpy as np

    from tests.engine.helpers import RecordingObserver, make_job
    from webui_api.engine.pipeline import run_txt2img

    job = make_job(prompts=(", ".join(["a red cat"] * 30),), negative_prompts=("blurry",), steps=2, options=options)
    return np.asarray(run_txt2img(tiny_model, job, RecordingObserver(), CancelToken()).images[0].image, dtype=np.int16)


def test_the_options_reach_the_pipeline(tiny_model):
    plain = _image(tiny_model, {})
    assert (abs(_image(tiny_model, {"batch_cond_uncond": False}) - plain)).max() <= 1
    assert (abs(_image(tiny_model, {"pad_cond_uncond": True}) - plain)).max() > 1
    assert (abs(_image(tiny_model, {"pad_cond_uncond_v0": True}) - plain)).max() > 1

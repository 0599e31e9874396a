"""A1111's `Pad conds` / `Pad conds v0` infotext keys: written exactly when the CFG denoiser
padded cond or uncond, carried from the denoiser through JobResult to the infotext, for
txt2img, img2img, the hires fix and batched runs."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from tests.engine.test_cond_padding import texts  # noqa: F401  (module fixture: encoded prompts)
from tests.engine.test_engine_denoiser import RecordingInner, _x_sigma
from webui_api.engine.denoiser import (
    PAD_CONDS,
    PAD_CONDS_V0,
    CFGDenoiser,
    CompVisDenoiser,
    CondBatch,
    GuidanceOptions,
    PaddingRecord,
    padding_applied,
)
from webui_api.jobs import HiresParams, JobResult
from webui_api.progress import CancelToken

LONG_PROMPT = ", ".join(["a red cat"] * 30)  # two 75-token chunks; "blurry" has one
PAD = {"pad_cond_uncond": True}
PAD_V0 = {"pad_cond_uncond_v0": True}


def _batch(tokens: int) -> CondBatch:
    return CondBatch(torch.zeros(1, tokens, 8), None)


@pytest.mark.parametrize(
    ("cond", "uncond", "opts", "expected"),
    [
        (154, 77, GuidanceOptions(pad_cond_uncond_v0=True), PAD_CONDS_V0),
        (77, 154, GuidanceOptions(pad_cond_uncond_v0=True), PAD_CONDS_V0),  # cut counts as padded
        (77, 77, GuidanceOptions(pad_cond_uncond_v0=True), None),
        (154, 77, GuidanceOptions(pad_cond_uncond=True, empty_crossattn=torch.zeros(77, 8)), PAD_CONDS),
        (77, 154, GuidanceOptions(pad_cond_uncond=True, empty_crossattn=torch.zeros(77, 8)), PAD_CONDS),
        (154, 77, GuidanceOptions(), None),  # no option: two UNet calls, nothing padded
        # both options: v0 wins, as A1111 checks it first
        (154, 77, GuidanceOptions(pad_cond_uncond=True, pad_cond_uncond_v0=True), PAD_CONDS_V0),
        # fewer extra tokens than one empty chunk: A1111's floor division adds nothing
        (100, 77, GuidanceOptions(pad_cond_uncond=True, empty_crossattn=torch.zeros(77, 8)), None),
    ],
)
def test_padding_applied_names_the_padding_that_changed_a_length(cond, uncond, opts, expected):
    assert padding_applied(_batch(cond), _batch(uncond), opts) == expected


@torch.inference_mode()
def test_the_denoiser_reports_its_last_calls_padding(tiny_model, texts):  # noqa: F811
    inner = RecordingInner(CompVisDenoiser(tiny_model))
    cfg = CFGDenoiser(inner, CancelToken(), GuidanceOptions(pad_cond_uncond_v0=True))
    x, sigma = _x_sigma()
    assert cfg.padded is None
    cfg(x, sigma, cond=texts["long"], uncond=texts["neg"], cond_scale=6.0)
    assert cfg.padded == PAD_CONDS_V0
    cfg(x, sigma, cond=texts["cat"], uncond=texts["neg"], cond_scale=6.0)
    assert cfg.padded is None  # A1111 resets its flags on every call
    record = PaddingRecord()
    record.note(cfg)
    assert record.infotext() == {}


def test_the_record_keeps_keys_in_a1111_order():
    record = PaddingRecord({PAD_CONDS_V0, PAD_CONDS})
    assert list(record.infotext().items()) == [("Pad conds", True), ("Pad conds v0", True)]


def _txt2img(model, options, prompt: str = LONG_PROMPT) -> JobResult:
    from webui_api.engine.pipeline import run_txt2img

    job = make_job(prompts=(prompt,), negative_prompts=("blurry",), steps=2, options=options)
    return run_txt2img(model, job, RecordingObserver(), CancelToken())


@pytest.mark.parametrize(
    ("options", "expected"), [(PAD, {"Pad conds": True}), (PAD_V0, {"Pad conds v0": True}), ({}, {})]
)
def test_txt2img_result_carries_the_padding(tiny_model, options, expected):
    assert _txt2img(tiny_model, options).cond_padding == expected


def test_txt2img_without_a_length_difference_writes_no_key(tiny_model):
    assert _txt2img(tiny_model, PAD_V0, prompt="a cat").cond_padding == {}


def test_img2img_result_carries_the_padding(tiny_model):
    from tests.engine.test_img2img_prep import img2img_job
    from webui_api.engine.img2img import run_img2img

    job = img2img_job(0.5, steps=2)
    job = replace(job, prompts=(LONG_PROMPT,), negative_prompts=("blurry",), options=dict(PAD_V0),
                  engine_options=replace(job.engine_options, pad_cond_uncond_v0=True))
    result = run_img2img(tiny_model, job, RecordingObserver(), CancelToken())
    assert result.cond_padding == {"Pad conds v0": True}
    assert "Denoising strength" in result.extra_generation_params


def _hires_job(first_prompt: str, hires_prompt: str, options):
    job = make_job(prompts=(first_prompt,), negative_prompts=("blurry",), steps=2, options=options)
    params = HiresParams(upscale_width=80, upscale_height=80, upscaler="Latent", latent_mode="bilinear",
                         latent_antialias=False, steps=2, denoising_strength=0.5, sampling=job.sampling,
                         prompts=(hires_prompt,), negative_prompts=("blurry",))
    return replace(job, hires=params)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [("a cat", LONG_PROMPT, {"Pad conds": True}),  # only the second pass padded
     (LONG_PROMPT, "a cat", {"Pad conds": True}),  # only the first pass padded: the key stays
     ("a cat", "a cat", {})],
)
def test_hires_result_carries_either_passes_padding(tiny_model, first, second, expected):
    from webui_api.engine.hires import run_hires

    result = run_hires(tiny_model, _hires_job(first, second, PAD), RecordingObserver(), CancelToken())
    assert result.cond_padding == expected
    assert "Pad conds" not in result.extra_generation_params


def test_batched_results_carry_each_groups_padding(tiny_model):
    from webui_api.engine.batched import run_txt2img_batched

    padded = make_job(prompts=(LONG_PROMPT,), negative_prompts=("blurry",), steps=2, options=PAD)
    plain = replace(padded, prompts=("a cat",), seeds=replace(padded.seeds, seeds=(2,)))
    results = run_txt2img_batched(tiny_model, [padded, plain], RecordingObserver(), [CancelToken(), CancelToken()],
                                  unet_rows=4)
    assert [r.cond_padding for r in results] == [{"Pad conds": True}, {}]
    alone = _txt2img(tiny_model, PAD)
    assert results[0].cond_padding == alone.cond_padding


@dataclass(frozen=True)
class _Model:
    title: str = "tiny.safetensors [abc]"
    model_name: str = "tiny"
    hash: str | None = "abc"


def test_infotext_and_info_write_the_keys_last(tiny_model):
    import json

    from webui_api.results import build_info, build_infotexts

    result = _txt2img(tiny_model, PAD)
    result.extra_generation_params["Lora hashes"] = "x: 1"  # set by the facade after the run
    job = make_job(prompts=(LONG_PROMPT,), negative_prompts=("blurry",), steps=2, options=PAD)
    (text,) = build_infotexts(job, result, _Model())
    assert text.endswith('Lora hashes: "x: 1", Pad conds: True, Version: v1.10.1')
    request = type("Request", (), {"seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": None,
                                   "styles": []})()
    info = json.loads(build_info(job, result, _Model(), [text], request))
    assert list(info["extra_generation_params"].items())[-1] == ("Pad conds", True)

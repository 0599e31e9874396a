"""Token merging (ToMe) options without torch: which ratio each pass uses (A1111's
get_token_merging_ratio), the infotext keys, the batch key, and bad values."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from tests.engine.helpers import make_job
from webui_api.batching import batch_key
from webui_api.engine_options import EngineOptions
from webui_api.jobs import GeneratedImage, HiresParams
from webui_api.results import infotext_params, token_merging_infotext


def options(overridden=(), **values) -> EngineOptions:
    return EngineOptions.from_options(values, overridden=overridden)


def test_defaults_are_a1111s_zero():
    plain = EngineOptions()
    assert (plain.token_merging_ratio, plain.token_merging_ratio_img2img, plain.token_merging_ratio_hr) == (0, 0, 0)
    assert plain.token_merging_for("txt2img") == 0
    assert plain.token_merging_for("txt2img", hires_pass=True) == 0
    assert plain.token_merging_for("img2img") == 0


def test_txt2img_uses_the_ratio_and_the_hires_pass_its_own_when_set():
    assert options(token_merging_ratio=0.4).token_merging_for("txt2img") == 0.4
    assert options(token_merging_ratio=0.4).token_merging_for("txt2img", hires_pass=True) == 0.4
    both = options(token_merging_ratio=0.4, token_merging_ratio_hr=0.7)
    assert both.token_merging_for("txt2img") == 0.4
    assert both.token_merging_for("txt2img", hires_pass=True) == 0.7
    only_hr = options(token_merging_ratio_hr=0.7)
    assert only_hr.token_merging_for("txt2img") == 0
    assert only_hr.token_merging_for("txt2img", hires_pass=True) == 0.7


def test_img2img_ratio_overrides_unless_override_settings_named_the_first_ratio():
    assert options(token_merging_ratio=0.3).token_merging_for("img2img") == 0.3
    assert options(token_merging_ratio=0.3, token_merging_ratio_img2img=0.6).token_merging_for("img2img") == 0.6
    named = options(("token_merging_ratio",), token_merging_ratio=0.3, token_merging_ratio_img2img=0.6)
    assert named.token_merging_for("img2img") == 0.3
    named_zero = options(("token_merging_ratio",), token_merging_ratio=0, token_merging_ratio_img2img=0.6)
    assert named_zero.token_merging_for("img2img") == 0.6
    assert options(token_merging_ratio_hr=0.5).token_merging_for("img2img", hires_pass=True) == 0


@pytest.mark.parametrize("bad", ["fast", float("nan"), float("inf"), [0.5]])
def test_unusable_ratios_are_value_errors_naming_the_option(bad):
    with pytest.raises(ValueError, match="token_merging_ratio"):
        options(token_merging_ratio=bad)


def with_hires(job):
    return replace(job, hires=HiresParams(upscale_width=96, upscale_height=96, upscaler="Latent",
                                          latent_mode="bilinear", latent_antialias=False, steps=2,
                                          denoising_strength=0.5, sampling=job.sampling, prompts=job.prompts,
                                          negative_prompts=job.negative_prompts))


def test_infotext_keys_only_when_non_zero():
    assert token_merging_infotext(make_job()) == {"Token merging ratio": None, "Token merging ratio hr": None}
    assert token_merging_infotext(make_job(options={"token_merging_ratio": 0.5})) == {
        "Token merging ratio": 0.5, "Token merging ratio hr": None}


def test_hr_key_only_for_hires_jobs_and_falls_back_to_the_first_ratio():
    hires = with_hires(make_job(options={"token_merging_ratio": 0.5}))
    assert token_merging_infotext(hires) == {"Token merging ratio": 0.5, "Token merging ratio hr": 0.5}
    only_hr = with_hires(make_job(options={"token_merging_ratio_hr": 0.3}))
    assert token_merging_infotext(only_hr) == {"Token merging ratio": None, "Token merging ratio hr": 0.3}
    assert token_merging_infotext(make_job(options={"token_merging_ratio_hr": 0.3}))["Token merging ratio hr"] is None


def test_img2img_infotext_writes_the_img2img_ratio_under_the_first_key():
    job = replace(make_job(options={"token_merging_ratio_img2img": 0.6}), kind="img2img")
    assert token_merging_infotext(job)["Token merging ratio"] == 0.6


def test_different_ratios_never_share_a_batch():
    plain, merged = make_job(), make_job(options={"token_merging_ratio": 0.5})
    assert batch_key(plain) is not None and batch_key(merged) is not None
    assert batch_key(plain) != batch_key(merged)
    assert batch_key(merged) == batch_key(make_job(options={"token_merging_ratio": 0.5}))
    assert batch_key(merged) != batch_key(make_job(options={"token_merging_ratio": 0.4}))


def test_keys_sit_where_a1111_puts_them_after_clip_skip_and_before_rng_and_tiling():
    job = replace(with_hires(make_job(options={"token_merging_ratio": 0.5, "token_merging_ratio_hr": 0.2})),
                  clip_skip=2, tiling=True)
    job = replace(job, seeds=replace(job.seeds, randn_source="CPU"))
    image = GeneratedImage(image=None, seed=1, subseed=2, prompt="a cat", negative_prompt="")
    params = infotext_params(job, image, SimpleNamespace(hash="abc", model_name="m"), {"Denoising strength": 0.5})
    keys = [key for key, value in params.items() if value is not None]
    order = ["Clip skip", "Token merging ratio", "Token merging ratio hr", "RNG", "Tiling"]
    assert [key for key in keys if key in order] == order
    assert (params["Token merging ratio"], params["Token merging ratio hr"]) == (0.5, 0.2)

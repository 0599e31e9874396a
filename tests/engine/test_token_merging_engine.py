"""Token merging (ToMe) through the engine on a tiny SD1 checkpoint (attention at full
resolution, as SD1): which passes merge (first pass, hires pass, img2img, batched runs), the
images it changes, and the UNet left as it was after the job."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.engine.helpers import RecordingObserver, make_job, with_options, with_sampler
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint
from tests.engine.test_img2img_prep import img2img_job
from webui_api.engine.batched import run_txt2img_batched
from webui_api.engine.facade import Engine
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.token_merging import transformer_blocks
from webui_api.jobs import HiresParams
from webui_api.progress import CancelToken


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tome") / "Stable-diffusion"
    write_checkpoint(folder / "main.safetensors", build_networks("sd1", seed=5))
    built = Engine(device="cpu", dtype="float32", paths=ModelPaths(ckpt_dirs=(folder,)), no_hashing=True)
    built.load("main")
    return built


class SelfAttentionLengths:
    """The token count the first full-resolution block's self-attention computes on, per
    call: its attention processor is wrapped, so merged inputs show their merged length."""

    def __init__(self, unet) -> None:
        self.attention = transformer_blocks(unet)[0].attn1
        self.original = self.attention.processor
        self.lengths: list[int] = []
        original, lengths = self.original, self.lengths

        def record(attn, hidden_states, *args, **kwargs):
            lengths.append(hidden_states.shape[1])
            return original(attn, hidden_states, *args, **kwargs)

        self.attention.set_processor(record)

    def close(self) -> None:
        self.attention.set_processor(self.original)


def txt2img_job(**options):
    return replace(make_job(seeds=(4,), steps=3, options=options), model_title="main")


def hires_job(**options):
    job = txt2img_job(**options)
    params = HiresParams(
        upscale_width=96, upscale_height=96, upscaler="Latent", latent_mode="bilinear", latent_antialias=False,
        steps=2, denoising_strength=0.6, sampling=with_sampler(job.sampling, "Euler", steps=2),
        prompts=job.prompts, negative_prompts=job.negative_prompts,
    )
    return replace(job, hires=params)


def run(engine, job):
    model = engine.load("main")
    recorder = SelfAttentionLengths(model.unet)
    try:
        result = engine.txt2img(job, RecordingObserver(), CancelToken())
    finally:
        recorder.close()
    return result, recorder.lengths


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


def hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_ratio_zero_is_bit_identical_to_no_option(engine):
    plain, plain_lengths = run(engine, txt2img_job())
    zero, zero_lengths = run(engine, txt2img_job(token_merging_ratio=0))
    assert np.array_equal(pixels(plain), pixels(zero))
    assert set(plain_lengths) == set(zero_lengths) == {64}  # 64x64 image: 8x8 latent tokens


def test_ratio_merges_every_first_pass_call_and_changes_the_image(engine):
    hooks = hook_count(engine.load("main").unet)
    plain, _ = run(engine, txt2img_job())
    merged, lengths = run(engine, txt2img_job(token_merging_ratio=0.5))
    assert set(lengths) == {32}
    assert not np.array_equal(pixels(plain), pixels(merged))
    again, _ = run(engine, txt2img_job(token_merging_ratio=0.5))
    assert np.array_equal(pixels(merged), pixels(again))  # deterministic (use_rand off)
    assert hook_count(engine.load("main").unet) == hooks  # nothing left behind


def test_the_job_after_a_merged_one_is_untouched(engine):
    before, _ = run(engine, txt2img_job())
    run(engine, txt2img_job(token_merging_ratio=0.5))
    after, lengths = run(engine, txt2img_job())
    assert np.array_equal(pixels(before), pixels(after)) and set(lengths) == {64}


@pytest.mark.parametrize(
    ("options", "first", "second"),
    [
        ({"token_merging_ratio_hr": 0.5}, {64}, {72}),  # hires pass only: 12x12 = 144 tokens, 72 merged
        ({"token_merging_ratio": 0.5}, {32}, {72}),  # the hires pass falls back to the first ratio
        ({"token_merging_ratio": 0.5, "token_merging_ratio_hr": 0.25}, {32}, {108}),
    ],
)
def test_hires_pass_uses_its_own_ratio(engine, options, first, second):
    result, lengths = run(engine, hires_job(**options))
    first_pass = [n for n in lengths if n <= 64]
    second_pass = lengths[len(first_pass):]
    assert len(first_pass) == 3 and len(second_pass) >= 1
    assert set(first_pass) == first and set(second_pass) == second
    assert result.images[0].image.size == (96, 96)


def test_img2img_uses_the_img2img_ratio(engine):
    model = engine.load("main")
    job = replace(img2img_job(0.75, steps=3), model_title="main")
    for options, expected in (({}, {64}), ({"token_merging_ratio_img2img": 0.25}, {48})):
        recorder = SelfAttentionLengths(model.unet)
        try:
            engine.img2img(with_options(job, options), RecordingObserver(), CancelToken())
        finally:
            recorder.close()
        assert set(recorder.lengths) == expected, options


def test_batched_jobs_get_the_images_they_get_alone(engine):
    """Each row merges on its own tokens, so sharing a UNet batch changes nothing."""
    model = engine.load("main")
    jobs = [
        replace(make_job(prompts=(f"a house {i}",), seeds=(10 + i,), steps=3,
                         options={"token_merging_ratio": 0.5}), model_title="main")
        for i in range(2)
    ]
    together = run_txt2img_batched(model, jobs, RecordingObserver(), [CancelToken(), CancelToken()], unet_rows=4)
    for job, shared in zip(jobs, together, strict=True):
        alone = run_txt2img_batched(model, [job], RecordingObserver(), [CancelToken()], unet_rows=4)[0]
        assert np.array_equal(pixels(alone), pixels(shared))
    plain = run_txt2img_batched(model, [with_options(jobs[0], {})], RecordingObserver(), [CancelToken()], unet_rows=4)
    assert not np.array_equal(pixels(plain[0]), pixels(together[0]))

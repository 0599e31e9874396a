"""Cross-request batching in the engine: a combined batch gives each job the images it gets alone.

"Alone" is the batched path with one job and the same fixed UNet call size (what a batching
server runs for a lone job); the fixed call size is what makes the two agree bit for bit
(see RowChunks).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from webui_api.engine.batched import RowChunks, run_txt2img_batched, token_groups
from webui_api.engine.denoiser import CondBatch
from webui_api.engine.pipeline import run_txt2img
from webui_api.progress import CancelToken

ROWS = 8  # UNet call size: the three-job batches below have 4 images = 8 rows


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(generated.image) for generated in result.images]


def alone(model, job, cancel=None, rows=ROWS):
    return run_txt2img_batched(model, [job], RecordingObserver(), [cancel or CancelToken()], unet_rows=rows)[0]


def together(model, jobs, cancels=None, observer=None, rows=ROWS):
    cancels = cancels or [CancelToken() for _ in jobs]
    return run_txt2img_batched(model, jobs, observer or RecordingObserver(), cancels, unet_rows=rows)


def assert_same_images(expected, actual) -> None:
    assert [(g.seed, g.subseed, g.prompt, g.negative_prompt) for g in expected.images] == [
        (g.seed, g.subseed, g.prompt, g.negative_prompt) for g in actual.images
    ]
    for want, got in zip(pixels(expected), pixels(actual), strict=True):
        assert want.shape == got.shape
        assert np.array_equal(want, got), f"{int((want != got).sum())} pixel values differ"


def three_jobs(sampler: str, batch_sizes=(1, 2, 1), **kwargs):
    """Different prompts, negatives and seeds per job; same batch key."""
    jobs, seed = [], 100
    for index, size in enumerate(batch_sizes):
        jobs.append(make_job(
            prompts=(f"a red house number {index}",), negative_prompts=(f"blurry {index}",) * size,
            seeds=tuple(range(seed, seed + size)), subseeds=tuple(range(7 * seed, 7 * seed + size)),
            batch_size=size, sampler=sampler, width=64, height=48, steps=5, **kwargs,
        ))
        seed += 37
    return jobs


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ SDE", "Euler", "DDIM", "DPM++ 2M SDE"])
def test_batched_jobs_equal_their_lone_runs_bit_for_bit(tiny_model, sampler):
    jobs = three_jobs(sampler)
    combined = together(tiny_model, jobs)
    assert len(combined) == 3
    for job, result in zip(jobs, combined, strict=True):
        assert_same_images(alone(tiny_model, job), result)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [4, 8, 12])
def test_exact_for_one_or_two_threads_and_split_or_padded_calls(tiny_model, threads, rows):
    """4 rows split the 8-row batch into two UNet calls, 12 pad it. (Call sizes that are not a
    multiple of 4 are not position-independent with 2 threads: see RowChunks.)"""
    torch.set_num_threads(threads)
    jobs = three_jobs("DPM++ 2M")
    for job, result in zip(jobs, together(tiny_model, jobs, rows=rows), strict=True):
        assert_same_images(alone(tiny_model, job, rows=rows), result)


def test_subseeds_and_ensd_stay_per_job(tiny_model):
    jobs = three_jobs("Euler a", subseed_strength=0.4, eta_noise_seed_delta=31337)
    for job, result in zip(jobs, together(tiny_model, jobs), strict=True):
        assert_same_images(alone(tiny_model, job), result)


def test_different_prompt_lengths_run_in_token_groups_and_stay_exact(tiny_model):
    long_prompt = ", ".join(f"word{i}" for i in range(90))  # two 75-token chunks
    jobs = three_jobs("Euler a")
    jobs[1] = make_job(
        prompts=(long_prompt,), seeds=(5, 6), batch_size=2, sampler="Euler a", width=64, height=48, steps=5
    )
    combined = together(tiny_model, jobs)
    for job, result in zip(jobs, combined, strict=True):
        assert_same_images(alone(tiny_model, job), result)


def test_token_groups_split_by_length_and_isolate_mixed_jobs(tiny_model):
    from webui_api.engine.pipeline import BatchSpec, batch_conditioning, resolve_plan

    long_prompt = ", ".join(f"word{i}" for i in range(90))
    jobs = [make_job(prompts=("short",)), make_job(prompts=(long_prompt,)), make_job(prompts=("also short",)),
            make_job(prompts=("short", long_prompt), seeds=(1, 2), batch_size=2)]
    plan = resolve_plan(jobs[0])
    conds = [batch_conditioning(tiny_model, job, plan, BatchSpec.of(job, 0)) for job in jobs]
    assert sorted(token_groups(conds)) == [[0, 2], [1], [3]]


def test_a_lone_batched_job_matches_the_plain_pipeline_within_one_level(tiny_model):
    """Without batching the plain pipeline runs (2 UNet rows); the fixed-size path may move a
    pixel by one level (a different BLAS kernel), never more."""
    job = make_job(seeds=(9,), sampler="Euler a", steps=5)
    plain = run_txt2img(tiny_model, job, RecordingObserver(), CancelToken())
    diff = np.abs(pixels(plain)[0].astype(int) - pixels(alone(tiny_model, job))[0].astype(int))
    assert diff.max() <= 1


def test_row_chunks_pad_split_and_trim(tiny_model):
    calls = []

    class Inner:
        def __call__(self, x, sigma, cond, image_cond=None):
            cond = CondBatch.of(cond)
            calls.append((x.shape[0], sigma.shape[0], cond.crossattn.shape[0], x[:, 0, 0, 0].tolist()))
            return x * 2

        def to_x0(self, x, out, sigma):
            return out

    chunks = RowChunks(Inner(), 4)
    x = torch.arange(6.0).reshape(6, 1, 1, 1).expand(6, 4, 3, 3).contiguous()
    out = chunks(x, torch.ones(6), torch.zeros(6, 77, 32))
    assert [c[:3] for c in calls] == [(4, 4, 4), (4, 4, 4)]
    assert calls[1][3] == [4.0, 5.0, 5.0, 5.0]  # padded with the last row
    assert out.shape == x.shape and torch.equal(out, x * 2)
    chunks(x[:4], torch.ones(4), torch.zeros(4, 77, 32))
    assert len(calls) == 3 and calls[-1][0] == 4
    with pytest.raises(ValueError, match="got 0"):
        RowChunks(Inner(), 0)


def test_interrupting_one_job_leaves_the_others_exact(tiny_model):
    jobs = three_jobs("Euler a")
    cancels = [CancelToken() for _ in jobs]

    def on_step(step):
        if step == 1:
            cancels[1].interrupt()

    combined = together(tiny_model, jobs, cancels, RecordingObserver(on_step=on_step))
    assert [r.interrupted for r in combined] == [False, True, False]
    assert len(combined[1].images) == 2
    for index in (0, 2):
        assert_same_images(alone(tiny_model, jobs[index]), combined[index])


def test_interrupting_every_job_stops_the_batch(tiny_model):
    jobs = three_jobs("Euler")
    cancels = [CancelToken() for _ in jobs]
    observer = RecordingObserver(on_step=lambda step: [c.interrupt() for c in cancels] if step == 0 else None)
    combined = together(tiny_model, jobs, cancels, observer)
    assert all(r.interrupted for r in combined)
    assert [e[1] for e in observer.events if e[0] == "step"] == [0]


def test_progress_shows_the_batch_as_one_job(tiny_model):
    observer = RecordingObserver()
    together(tiny_model, three_jobs("Euler"), observer=observer)
    assert observer.events[0] == ("batch_started", 0, 1) and observer.events[-1] == ("batch_finished", 0)
    assert observer.steps_of_batch(0) == [0, 1, 2, 3, 4]


def test_jobs_with_different_sampling_are_refused(tiny_model):
    jobs = [make_job(steps=4), make_job(steps=5)]
    with pytest.raises(ValueError, match="same sampling"):
        together(tiny_model, jobs)

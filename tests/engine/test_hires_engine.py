"""The hires fix engine without HTTP: two passes per batch, sizes, progress events."""

from __future__ import annotations


def test_hires_reports_two_jobs_per_batch(tiny_model):
    from dataclasses import replace

    from tests.engine.helpers import RecordingObserver, make_job
    from webui_api.engine.hires import run_hires
    from webui_api.jobs import HiresParams
    from webui_api.progress import CancelToken

    job = make_job(steps=2, seeds=(1, 2), n_iter=2)
    params = HiresParams(upscale_width=80, upscale_height=80, upscaler="Latent", latent_mode="bilinear",
                         latent_antialias=False, steps=2, denoising_strength=0.5, sampling=job.sampling,
                         prompts=job.prompts, negative_prompts=job.negative_prompts)
    observer = RecordingObserver()
    result = run_hires(tiny_model, replace(job, hires=params), observer, CancelToken())
    finished = [e[1] for e in observer.events if e[0] == "batch_finished"]
    assert finished == [0, 1, 2, 3]
    assert [g.image.size for g in result.images] == [(80, 80), (80, 80)]
    assert len([e for e in observer.events if e[0] == "step"]) == 2 * (2 + 2)

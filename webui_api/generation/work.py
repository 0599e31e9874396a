"""The scheduler's unit of work for one generation request: ONE engine call.

The engine call returns a `JobResult` that carries everything the response needs, the model
info included (`JobResult.model_info`), so nothing here loads a model. Whether a job joins a
cross-request batch is decided once, in `batch_slot`; the worker then runs it through the
batched engine path or the plain one accordingly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..batching import batch_key
from ..jobs import GenerationJob, JobResult
from ..progress import CancelToken
from ..runtime import Runtime
from ..scheduler import BatchSlot, ProgressSpec, WorkItem
from ..workers import RemoteCall, checkpoint_name


def face_restorer(runtime: Runtime, job: GenerationJob, save_images: bool = False) -> Any:
    """The face restorer of a restore_faces job (a missing model is a 400 now, before the
    queue), None otherwise. It keeps the unrestored images when they are to be saved too."""
    if not job.restore_faces:
        return None
    from ..postprocess.face_restore.restorers import job_restorer, keeps_originals

    keep = keeps_originals(job.options, save_images)
    return job_restorer(runtime.settings, runtime.postprocess_models, job.options, keep_originals=keep)


def first_pass_sink(job: GenerationJob, save_images: bool) -> list[Any] | None:
    """A list the engine fills with hires fix's first-pass pictures when they are to be saved
    (save_images_before_highres_fix), else None."""
    from ..postprocess.saving import keeps_before_hires

    return [] if keeps_before_hires(job, job.options, save_images) else None


def txt2img_item(
    runtime: Runtime, job: GenerationJob, restorer: Any = None, first_pass: list[Any] | None = None,
) -> WorkItem:
    """A batchable job on a batching server runs through the batched path even alone, so its
    images do not depend on whether partners showed up (webui_api.engine.batched)."""
    slot = batch_slot(runtime, job)
    if slot is not None:  # batchable: no hires pass to keep, no faces to restore (batching.why_not_batchable)

        def run(cancel: CancelToken) -> JobResult:
            return run_batch(runtime, [job], [cancel])[0]
    else:
        extra: dict[str, Any] = {} if first_pass is None else {"before_hires": first_pass.extend}
        if restorer is not None:
            extra["restore_faces"] = restorer

        def run(cancel: CancelToken) -> JobResult:
            return runtime.engine.txt2img(job, runtime.progress, cancel, **extra)

    job_count = job.n_iter * 2 if job.hires is not None else job.n_iter  # A1111 doubles it for hires fix
    spec = ProgressSpec("scripts_txt2img", job_count, job.job_timestamp, job.preview_every_n_steps)
    return WorkItem(run=run, label="txt2img", progress=spec, batch=slot,
                    remote=remote_call(runtime, "txt2img", job, restorer, first_pass, batched=slot is not None))


def img2img_item(runtime: Runtime, job: GenerationJob, restorer: Any = None) -> WorkItem:
    extra: dict[str, Any] = {} if restorer is None else {"restore_faces": restorer}

    def run(cancel: CancelToken) -> JobResult:
        return runtime.engine.img2img(job, runtime.progress, cancel, **extra)

    spec = ProgressSpec("scripts_img2img", job.n_iter, job.job_timestamp, job.preview_every_n_steps)
    return WorkItem(run=run, label="img2img", progress=spec, remote=remote_call(runtime, "img2img", job, restorer))


def remote_call(
    runtime: Runtime, kind: str, job: GenerationJob, restorer: Any = None, first_pass: list[Any] | None = None,
    batched: bool = False,
) -> RemoteCall | None:
    """The item as data for a worker in another process (--ray); None when it closes over this
    process's objects (a face restorer, a first-pass sink), so it runs on the ingress's engine."""
    if restorer is not None or first_pass is not None:
        return None
    rows = runtime.settings.unet_rows if batched else None
    return RemoteCall(kind, (job,), rows, checkpoint_name(runtime.engine, job.model_title))


def batch_slot(runtime: Runtime, job: GenerationJob) -> BatchSlot | None:
    """How the job may join a cross-request batch; None when batching is off or it must run alone."""
    key = batch_key(job) if runtime.scheduler.batching.enabled else None
    if key is None:
        return None

    def run_group(items: Sequence[WorkItem]) -> list[JobResult]:
        jobs = [item.batch.payload for item in items if item.batch is not None]
        return run_batch(runtime, jobs, [item.cancel for item in items])

    return BatchSlot(key=key, size=job.batch_size, run_group=run_group, payload=job)


def run_batch(runtime: Runtime, jobs: list[GenerationJob], cancels: list[CancelToken]) -> list[JobResult]:
    """Jobs sharing a batch key as one sampler batch of the server's fixed UNet row count."""
    return runtime.engine.txt2img_batch(jobs, runtime.progress, cancels, unet_rows=runtime.settings.unet_rows)

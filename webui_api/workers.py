"""The worker interface behind the scheduler: who actually runs a queued work item.

The scheduler owns the queue (priority, depth guard, queue timeout, batching gather) and hands
each item it takes to a `Worker`, one lane thread per worker. In the default single-process
mode there is one `LocalWorker`, which runs the item's closure on the lane thread against the
process's own engine. With `--ray` the lanes are `RayWorker`s (webui_api.cluster), which send
the item's `RemoteCall` to a Serve replica that owns a device and an engine. Because both sit
behind the same queue, priority, guards, batching and the result cache behave the same in both
modes.

A worker that loses its device mid-job (a dead Ray replica) raises `WorkerLost`; the scheduler
then runs the item once more on another lane, and answers 503 with Retry-After if that fails too.

No torch, no Ray, no FastAPI here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ServiceUnavailable
from .progress import CancelToken

if TYPE_CHECKING:
    from .jobs import GenerationJob
    from .progress import ProgressTracker

# The scheduler imports this module, so its WorkItem is named here by role only (Any): an item
# has `run(cancel)`, `cancel`, `label`, `progress` and `remote` (webui_api.scheduler.WorkItem).
WorkItem = Any


class WorkerLost(ServiceUnavailable):
    """The worker running a job went away (its process or node died); the job did not finish."""

    def __init__(self, label: str, detail: str) -> None:
        super().__init__(f"The worker running this {label} job was lost ({detail}); retry shortly")
        self.headers = {"Retry-After": "5"}


@dataclass(frozen=True)
class RemoteCall:
    """A work item as data, so another process can run it: which engine entry point, on which jobs.

    `kind` is "txt2img", "img2img" or "txt2img_batch" (several jobs as one sampler batch with
    `unet_rows` rows). Items that carry closures over process-local objects (face restorers,
    hires first-pass sinks, scripts, extras, model loads) have no RemoteCall and run on the
    ingress's own lane."""

    kind: str
    jobs: tuple[GenerationJob, ...]
    unet_rows: int | None = None
    checkpoint: str | None = None  # the checkpoint's relative file name, as every replica's catalog knows it

    @property
    def model_title(self) -> str | None:
        """What the replica loads: the file name (a title's short hash may not be in a replica's
        catalog yet: it is computed when a process first loads the file), else the job's name."""
        return self.checkpoint or self.jobs[0].model_title

    @property
    def model_key(self) -> str:
        """What a replica must hold to run this call without loading: checkpoint and VAE.

        Ray Serve's multiplexing routes on this string (webui_api.cluster.deployments)."""
        job = self.jobs[0]
        engine_options = getattr(job, "engine_options", None)  # what the engine reads (the job's typed options)
        vae = engine_options.sd_vae if engine_options is not None else job.options.get("sd_vae", "Automatic")
        vae = str(vae or "Automatic")
        return f"{self.model_title or ''}|{vae}"

    @property
    def steps(self) -> int:
        return sum(job.sampling.steps for job in self.jobs)

    @property
    def members(self) -> int:
        """Requests whose jobs this call carries, each with its own cancel token."""
        return len(self.jobs)

    @property
    def progress_plan(self) -> tuple[int, str, int]:
        """(job count, job timestamp, preview every n steps) for the replica's /progress."""
        job = self.jobs[0]
        return job.n_iter, job.job_timestamp, job.preview_every_n_steps


@dataclass(frozen=True)
class RemoteExtras:
    """An extras request (upscale, face restoration) as data for a worker replica, which owns
    the device: the decoded images, the request's parameters (postprocess.extras.ExtrasParams)
    and the options the upscaler catalog reads. The replica builds its own catalog and face
    restorers from its settings (the same models folders) and keeps their models loaded."""

    images: tuple[Any, ...]  # PIL images
    params: Any
    options: dict[str, Any]
    job_timestamp: str
    kind: str = "extras"

    @property
    def model_key(self) -> str:
        """No checkpoint is needed: any replica may take it (Serve's multiplexing is not asked)."""
        return ""

    @property
    def members(self) -> int:
        return 1

    @property
    def progress_plan(self) -> tuple[int, str, int]:
        return len(self.images), self.job_timestamp, 0


@dataclass(frozen=True)
class RayOptions:
    """The `--ray*` flags: where the cluster is and how the worker deployment is sized."""

    address: str | None = None  # --ray-address; None starts a local Ray instance
    workers: int = 1  # --ray-workers: fixed replica count (default: one per visible GPU, 1 without)
    gpus_per_worker: float = 0.0  # --ray-gpus-per-worker
    min_workers: int | None = None  # --ray-min-workers / --ray-max-workers: autoscale on queue length
    max_workers: int | None = None
    cpus_per_worker: float = 1.0
    cpus_per_ingress: float = 0.5
    ingress_replicas: int = 1
    app_name: str = "webui-api"
    # one deployment of the application (set when it is built): names the options document the
    # ingress replicas share in Redis, so each deployment starts from config.json again
    deployment_id: str = ""

    def __post_init__(self) -> None:
        if self.workers < 1 or self.gpus_per_worker < 0:
            raise ValueError(f"--ray-workers must be >= 1 and --ray-gpus-per-worker >= 0, got {self.workers}, "
                             f"{self.gpus_per_worker}")
        if (self.min_workers is None) != (self.max_workers is None):
            raise ValueError("--ray-min-workers and --ray-max-workers go together")
        if self.min_workers is not None and not 0 <= self.min_workers <= self.max_workers:  # type: ignore[operator]
            raise ValueError(f"need 0 <= --ray-min-workers <= --ray-max-workers, got {self.min_workers}, "
                             f"{self.max_workers}")
        if self.ingress_replicas < 1:
            raise ValueError(f"--ray-ingress-replicas must be >= 1, got {self.ingress_replicas}")

    def check_task_store(self, redis_url: str | None) -> None:
        """Several ingress replicas must share one task store (Redis): each keeps its own
        SQLite store otherwise, so a task accepted by one would be unknown to the others, and
        a task could run twice or never after an ingress dies."""
        if self.ingress_replicas > 1 and not redis_url:
            raise ValueError(
                f"--ray-ingress-replicas {self.ingress_replicas} needs --redis-url: the ingress replicas share their "
                "async tasks through Redis (a task accepted by one replica is read and run through any other)"
            )

    @property
    def options_key(self) -> str:
        return f"{self.app_name}:{self.deployment_id}"

    @property
    def shares_ingress_state(self) -> bool:
        """Several ingress replicas: options, /progress, /interrupt and /skip go through the
        cluster (Redis, the job board) instead of one replica's memory."""
        return self.ingress_replicas > 1

    @property
    def autoscaling(self) -> bool:
        return self.max_workers is not None

    @property
    def lanes(self) -> int:
        """Scheduler lanes in the ingress: one per replica at the most, so the queue (priority,
        guards, batching) stays in the ingress and Serve sees queued work when it may scale up."""
        return max(1, self.max_workers if self.max_workers is not None else self.workers)


class Worker(Protocol):
    """One lane's executor: runs an item the scheduler took off the queue and returns its result.

    `progress` is the lane's tracker: the worker begins/ends it (so a remote worker can mirror a
    replica's progress into it), and `run` is called on the lane's own thread."""

    name: str

    def execute(self, item: WorkItem, progress: ProgressTracker) -> Any: ...

    def close(self) -> None: ...


class LocalWorker:
    """The single-process worker: the item's closure runs here, on the lane thread, against the
    engine this process owns."""

    name = "local"

    def execute(self, item: WorkItem, progress: ProgressTracker) -> Any:
        return item.run(item.cancel)

    def close(self) -> None:
        """Nothing to release: the engine belongs to the server's runtime."""


def checkpoint_name(engine: Any, title: str | None) -> str | None:
    """The relative file name of the checkpoint a job names, for a RemoteCall; None when the
    name is unknown here (the replica then answers the same 404 the local engine would)."""
    from .errors import ApiError

    if not title:
        return None
    try:
        return str(engine.find_checkpoint(title).name)
    except ApiError:
        return None


class AnyCancel(CancelToken):
    """The cancel flags of a cross-request batch run as one remote call: `interrupted` when any
    member's is. The lane forwards each member's flags on its own (`member_tokens`), so the
    replica stops only that member's rows, as the local batched path does (engine.batched)."""

    def __init__(self, tokens: Sequence[CancelToken]) -> None:
        super().__init__()
        self._tokens = tuple(tokens)

    @property
    def members(self) -> tuple[CancelToken, ...]:
        return self._tokens

    def interrupt(self) -> None:
        for token in self._tokens:
            token.interrupt()

    def skip(self) -> None:
        for token in self._tokens:
            token.skip()

    def clear_skip(self) -> None:
        for token in self._tokens:
            token.clear_skip()

    @property
    def interrupted(self) -> bool:
        return any(token.interrupted for token in self._tokens)

    @property
    def skipped(self) -> bool:
        return any(token.skipped for token in self._tokens)


def member_tokens(cancel: CancelToken) -> tuple[CancelToken, ...]:
    """The per-member tokens of a batch item's AnyCancel, or the item's one token."""
    return cancel.members if isinstance(cancel, AnyCancel) else (cancel,)


def run_call(
    engine: Any, progress: Any, call: RemoteCall | RemoteExtras, cancels: Sequence[CancelToken], settings: Any = None,
    postprocess_models: Any = None,
) -> Any:
    """What a replica does with a RemoteCall: the engine calls the local items make
    (webui_api.generation.work), with the same return shape: a JobResult, or a list of them for
    a batch. The jobs name their checkpoint by file name here (see `RemoteCall.model_title`).
    A RemoteExtras runs the extras pipeline the route would run, on this replica's device."""
    if len(cancels) != call.members:
        raise ValueError(f"a {call.kind} call needs {call.members} cancel token(s), got {len(cancels)}")
    if isinstance(call, RemoteExtras):
        return run_extras_call(call, settings, postprocess_models, progress, cancels[0])
    jobs = [_by_file_name(job, call.checkpoint) for job in call.jobs]
    if call.kind == "txt2img" and call.unet_rows is None:
        return engine.txt2img(jobs[0], progress, cancels[0])
    if call.kind in ("txt2img", "txt2img_batch"):
        results = engine.txt2img_batch(jobs, progress, list(cancels), unet_rows=call.unet_rows)
        return results[0] if call.kind == "txt2img" else results
    if call.kind == "img2img":
        return engine.img2img(jobs[0], progress, cancels[0])
    raise ValueError(f"unknown remote call kind {call.kind!r}")


def _by_file_name(job: GenerationJob, checkpoint: str | None) -> GenerationJob:
    import dataclasses

    return job if checkpoint is None else dataclasses.replace(job, model_title=checkpoint)


def run_extras_call(call: RemoteExtras, settings: Any, models: Any, progress: Any, cancel: CancelToken) -> Any:
    """The extras route's work on a replica: an ExtrasResult, /progress counting finished images."""
    from .postprocess.extras import run_extras
    from .postprocess.face_restore.restorers import FaceRestorers
    from .postprocess.upscale import UpscalerCatalog

    catalog = UpscalerCatalog.from_settings(settings, models, call.options)
    faces = FaceRestorers.from_settings(settings, models)
    return run_extras(list(call.images), call.params, catalog, lambda: cancel.interrupted,
                      lambda index, _total: progress.batch_finished(index), faces)

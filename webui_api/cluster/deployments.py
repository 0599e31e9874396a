"""The Serve application of `--ray`: an ingress deployment and a worker deployment.

- **ingress** (CPU only): the whole FastAPI app of the single-process server (routes, auth,
  guards, result cache, rate limits, async tasks), whose scheduler lanes are `RayWorker`s.
  Items it cannot ship (face restoration, hires first-pass saving, scripts, extras) run on its
  own CPU engine.
- **worker** (one device each): an engine, a progress tracker, and `run(call, job_id)`. Serve's
  model multiplexing is keyed by checkpoint + VAE (`RemoteCall.model_key`), so a job lands on a
  replica that holds its model when one does; `max_ongoing_requests=1`, one job per device.
  With `--ray-min-workers/--ray-max-workers` the worker count follows the queue (Serve's
  autoscaling on ongoing + queued requests per replica).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import uuid
from typing import Any

import ray
from ray import serve

from ..pixel_budget import pixel_budget
from ..postprocess.face_restore.cache import PostprocessModels
from ..progress import CancelToken, ProgressTracker
from ..settings import Settings
from ..workers import AnyCancel, RayOptions, RemoteCall, RemoteExtras, run_call
from .board import board_handle
from .lanes import WATCH_INTERVAL, WORKER_DEPLOYMENT

log = logging.getLogger(__name__)

INGRESS_DEPLOYMENT = "ingress"
MODELS_PER_REPLICA = 2  # checkpoint+VAE pairs a replica advertises to Serve's router


def _model_title(model_key: str) -> str | None:
    title = model_key.split("|", 1)[0]  # RemoteCall.model_key: "<checkpoint>|<vae>"
    return title or None


class WorkerReplica:
    """One device, one engine; runs RemoteCalls one at a time and reports through the board."""

    def __init__(self, settings: Settings) -> None:
        from ..postprocess.previews import preview_encoder

        self._settings = settings
        self._engine: Any = None
        self._engine_lock = threading.Lock()
        self._postprocess_models = PostprocessModels()  # upscalers and face restorers of extras calls, kept loaded
        # the replica has no options store: previews in A1111's default live format, PNG
        self._progress = ProgressTracker(encode_preview=preview_encoder(lambda: "png"))
        self._board = board_handle()
        self._replica = serve.get_replica_context().replica_tag
        self._actor_name = ray.get_runtime_context().get_actor_name() or ""
        engine = self._engine_ready()  # torch and the checkpoint catalog now: a replica is ready when Serve says so
        if not settings.skip_load_model_at_start:
            load_startup_model(engine)

    def _engine_ready(self) -> Any:
        with self._engine_lock:
            if self._engine is None:
                from ..engine.facade import Engine

                self._engine = Engine.from_settings(self._settings)
            return self._engine

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def hold(self, model_key: str) -> str:
        """Serve's multiplexed loader: load the checkpoint (its VAE is applied per job)."""
        await asyncio.to_thread(lambda: self._engine_ready().load(_model_title(model_key)))
        log.info("replica %s holds %s", self._replica, model_key)
        return model_key

    async def run(self, call: RemoteCall | RemoteExtras, job_id: str) -> Any:
        """The job is on the board (and in this replica's /progress) from the moment it arrives,
        model load included, so an interrupt or skip reaches it while its checkpoint loads too
        (A1111's state.begin also comes before its override checkpoint loads)."""
        cancels = [CancelToken() for _ in range(call.members)]  # one per request in a batch call
        job_count, job_timestamp, preview_every = call.progress_plan
        await self._board.register.remote(job_id, self._replica, self._actor_name, call.model_key)
        self._progress.begin("remote", job_count, job_timestamp, AnyCancel(cancels), preview_every)
        stop = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(job_id, cancels, stop), daemon=True)
        heartbeat.start()
        try:
            if call.model_key:  # extras need no checkpoint
                await self.hold(serve.get_multiplexed_model_id())
            # the server's image pixel budget, which to_thread carries into the thread that runs the call
            with pixel_budget(self._settings.guards.max_input_pixels):
                return await asyncio.to_thread(run_call, self._engine_ready(), self._progress, call, cancels,
                                               self._settings, self._postprocess_models)
        finally:
            stop.set()
            await asyncio.to_thread(heartbeat.join)
            self._progress.end()
            self._board.unregister.remote(job_id)

    def _heartbeat(self, job_id: str, cancels: list[CancelToken], stop: threading.Event) -> None:
        """Push progress, pull each member's interrupt/skip, every WATCH_INTERVAL until the job ends."""
        while not stop.wait(WATCH_INTERVAL):
            flags = ray.get(self._board.sync.remote(job_id, self._progress.snapshot()))
            for member in flags.get("interrupt", ()):
                if member < len(cancels):
                    cancels[member].interrupt()
            for member in flags.get("skip", ()):
                if member < len(cancels):
                    cancels[member].skip()


def load_startup_model(engine: Any) -> None:
    """The default checkpoint, loaded while the replica starts (as the single-process server
    loads it at start, and A1111 does), so a fresh or scaled-up replica's first job does not pay
    for the load. A checkpoint that fails to load is logged; jobs then load on demand."""
    from ..errors import ApiError

    try:
        engine.load(None)
    except (ApiError, OSError) as exc:
        log.warning("worker replica: the default checkpoint did not load at start (%s); loading on first use", exc)


def worker_deployment(options: RayOptions) -> Any:
    """The worker deployment with its resources, replica count or autoscaling."""
    config: dict[str, Any] = {
        "name": WORKER_DEPLOYMENT,
        "max_ongoing_requests": 1,
        "ray_actor_options": {"num_gpus": options.gpus_per_worker, "num_cpus": options.cpus_per_worker},
        "health_check_period_s": 2,
        "graceful_shutdown_timeout_s": 5,
    }
    if options.autoscaling:
        config["autoscaling_config"] = {
            "min_replicas": options.min_workers, "max_replicas": options.max_workers,
            "target_ongoing_requests": 1, "upscale_delay_s": 5, "downscale_delay_s": 120,
        }
    else:
        config["num_replicas"] = options.workers
    return serve.deployment(**config)(WorkerReplica)


class IngressApp:
    """The FastAPI app of one ingress replica, built at replica start (its lifespan runs there);
    its scheduler lanes send work to the worker deployment through `workers` (a handle)."""

    def __init__(self, settings: Settings, workers: Any) -> None:
        self._settings = settings
        self._workers = workers

    def __serve_build_asgi_app__(self) -> Any:
        from ..app import create_app
        from .lanes import ray_workers

        options = self._settings.ray
        replica = serve.get_replica_context().replica_tag
        control = cluster_job_control(replica) if options.shares_ingress_state else None
        return create_app(self._settings, workers=ray_workers(options.lanes, self._workers), replica=replica,
                          job_control=control)


def cluster_job_control(replica: str) -> Any:
    """Several ingress replicas: /progress, /interrupt and /skip through the job board (started
    with the app's runtime, closed with it)."""
    from .ingress_control import ClusterJobControl, RayBoard

    def build(runtime: Any) -> ClusterJobControl:
        control = ClusterJobControl(RayBoard(board_handle()), replica, runtime.scheduler, runtime.progress)
        control.start()
        return control

    return build


def ingress_deployment(options: RayOptions) -> Any:
    return serve.deployment(
        name=INGRESS_DEPLOYMENT, num_replicas=options.ingress_replicas,
        ray_actor_options={"num_cpus": options.cpus_per_ingress, "num_gpus": 0},
        max_ongoing_requests=256, graceful_shutdown_timeout_s=10,
    )(serve.ingress()(IngressApp))


def build_application(settings: Settings) -> Any:
    """The bound Serve application: ingress (CPU, no device) + workers (one device each)."""
    options = settings.ray
    if options is None:
        raise ValueError("build_application needs settings.ray (the --ray options)")
    options.check_task_store(settings.redis_url)
    settings = dataclasses.replace(settings, ray=dataclasses.replace(options, deployment_id=uuid.uuid4().hex))
    workers = worker_deployment(options).bind(settings)
    return ingress_deployment(options).bind(dataclasses.replace(settings, device="cpu"), workers)

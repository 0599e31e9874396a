"""The runtime objects one server owns, built once in the app's lifespan and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field

from .engine.protocols import GenerationEngine
from .job_control import JobControl
from .options import OptionsStore
from .postprocess.face_restore.cache import PostprocessModels
from .progress import ProgressTracker
from .scheduler import Scheduler
from .serving.gpu_health import GpuHealth, NoSensor
from .serving.hooks import ServingHooks
from .serving.metrics import Metrics
from .settings import Settings
from .weights import WeightsFetcher


@dataclass(kw_only=True)
class Runtime:
    """What the routes, the generation layer and the task runner share (one per app, no module state)."""

    settings: Settings
    options: OptionsStore
    engine: GenerationEngine  # webui_api.engine.facade.Engine (imported lazily: it pulls in torch)
    scheduler: Scheduler
    progress: ProgressTracker
    # Upscaler / face restorer / face detector weights loaded by the worker, kept between calls.
    postprocess_models: PostprocessModels = field(default_factory=PostprocessModels)
    # Prometheus metrics of this app: observe_job, observe_batch, count_error, count_cache ...
    metrics: Metrics = field(default_factory=Metrics)
    # guards, result cache, audit log, lifecycle; the generation layer calls its hooks
    serving: ServingHooks
    # pinned weights (built-in upscalers, face restoration, interrogate) fetched on first use
    weights: WeightsFetcher
    # per-GPU telemetry for /metrics and /sdapi/v1/memory, and the --gpu-max-temp admission gate
    gpu_health: GpuHealth = field(default_factory=lambda: GpuHealth(NoSensor()))
    # what /progress, /interrupt and /skip act on: this process's jobs, or a cluster's (--ray)
    control: JobControl | None = None

    def job_control(self) -> JobControl:
        """The control the routes use; this process's scheduler and tracker unless one was set."""
        if self.control is None:
            from .job_control import LocalJobControl

            self.control = LocalJobControl(self.scheduler, self.progress)
        return self.control

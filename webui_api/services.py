"""The runtime objects one server owns, built once in the app's lifespan and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .options import OptionsStore
from .postprocess.face_restore.cache import PostprocessModels
from .progress import ProgressTracker
from .scheduler import Scheduler
from .serving.audit import AuditLog
from .serving.guards import RequestLimits
from .serving.hooks import ServingHooks
from .serving.lifecycle import Lifecycle
from .serving.metrics import Metrics
from .serving.result_cache import ResultCache
from .settings import Settings
from .weights import WeightsFetcher


@dataclass
class Services:
    settings: Settings
    options: OptionsStore
    engine: Any  # webui_api.engine.service.Engine (imported lazily: it pulls in torch)
    scheduler: Scheduler
    progress: ProgressTracker
    # Upscaler / face restorer / face detector weights loaded by the worker, kept between calls.
    postprocess_models: PostprocessModels = field(default_factory=PostprocessModels)
    # Prometheus metrics of this app: observe_job, observe_batch, count_error, count_cache ...
    metrics: Metrics = field(default_factory=Metrics)
    # guards, result cache, audit log, lifecycle; the generation routes call its hooks
    serving: Optional[ServingHooks] = None
    # pinned weights (built-in upscalers, face restoration, interrogate) fetched on first use
    weights: Optional[WeightsFetcher] = None

    def __post_init__(self) -> None:
        if self.weights is None:
            self.weights = WeightsFetcher.from_settings(self.settings)
        if self.serving is None:  # built without settings for them: guards at their defaults, no cache/audit
            self.serving = ServingHooks(RequestLimits(), ResultCache(None), self.metrics, AuditLog(None), Lifecycle())

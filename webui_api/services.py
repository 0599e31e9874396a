"""The runtime objects one server owns, built once in the app's lifespan and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .options import OptionsStore
from .postprocess.face_restore.cache import PostprocessModels
from .progress import ProgressTracker
from .scheduler import Scheduler
from .settings import Settings


@dataclass
class Services:
    settings: Settings
    options: OptionsStore
    engine: Any  # webui_api.engine.service.Engine (imported lazily: it pulls in torch)
    scheduler: Scheduler
    progress: ProgressTracker
    # Upscaler / face restorer / face detector weights loaded by the worker, kept between calls.
    postprocess_models: PostprocessModels = field(default_factory=PostprocessModels)

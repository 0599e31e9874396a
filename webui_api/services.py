"""The runtime objects one server owns, built once in the app's lifespan and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import OptionsStore
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

"""Readiness and graceful shutdown state, shared by /ready, the intake guard and the lifespan."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..errors import ServiceUnavailable


class ShuttingDown(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("The server is shutting down and accepts no new work; retry on another instance")
        self.headers = {"Retry-After": "5"}


@dataclass
class Lifecycle:
    """`model_loaded` flips once the startup model is in; `draining` once shutdown began."""

    model_loaded: bool = False
    draining: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mark_loaded(self) -> None:
        with self._lock:
            self.model_loaded = True

    def begin_drain(self) -> None:
        """Stop intake: new generation requests and task submissions get 503 from now on."""
        with self._lock:
            self.draining = True

    def check_intake(self) -> None:
        if self.draining:
            raise ShuttingDown()

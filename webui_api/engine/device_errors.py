"""Device failures turned into answers a client can act on.

The scheduler frees memory after any failed job (Engine.free_memory: gc + torch.cuda.empty_cache);
this module decides what the client is told. A CUDA out-of-memory error is not the server's
bug nor the client's: it becomes DeviceOutOfMemory (503 + Retry-After) instead of a 500.
"""

from __future__ import annotations

import torch

from webui_api.errors import DeviceOutOfMemory


def client_error_for(exc: BaseException) -> BaseException:
    """The exception the waiting request should see for `exc` (itself unless it is a device OOM)."""
    if isinstance(exc, torch.OutOfMemoryError):
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        return DeviceOutOfMemory(first_line[:300])
    return exc

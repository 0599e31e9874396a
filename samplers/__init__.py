"""k-diffusion-style samplers and sigma schedules with A1111's names and numerics.

Standalone: imports torch and numpy only (``samplers.brownian`` also torchsde, when a
Brownian-tree noise sampler is built). See ``samplers.registry`` for the A1111 tables and
``samplers.schedules`` for the schedules.
"""

from samplers.registry import (
    SAMPLERS,
    SCHEDULERS,
    SamplerInfo,
    SchedulerInfo,
    UnknownSamplerError,
    UnknownSchedulerError,
    compute_sigmas,
    find_sampler,
    find_scheduler,
    implemented_samplers,
    resolve_sampler_and_scheduler,
    sampler_call_kwargs,
)

__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "SamplerInfo",
    "SchedulerInfo",
    "UnknownSamplerError",
    "UnknownSchedulerError",
    "compute_sigmas",
    "find_sampler",
    "find_scheduler",
    "implemented_samplers",
    "resolve_sampler_and_scheduler",
    "sampler_call_kwargs",
]

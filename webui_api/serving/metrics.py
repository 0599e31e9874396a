"""Prometheus metrics for one app: its own registry (no process-global state), scraped at /metrics.

The names say what an operator watches on a shared GPU server: how many jobs wait, how long
they wait and run, sampling speed, how full the batches are, which errors happen, and how
often the result cache answers. Other parts of the server report through the `observe_*` /
`count_*` methods, never through the prometheus objects directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
STEPS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 50, 75, 100, 200, 500)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    """The server's metrics; `render()` gives the text exposition format."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("webui_api_queue_depth", "Generations waiting in the queue", registry=r)
        self.tasks_pending = Gauge("webui_api_tasks_pending", "Async tasks waiting in the task store", registry=r)
        self.wait_seconds = Histogram("webui_api_queue_wait_seconds", "Time a job waited before it ran",
                                      ["route"], buckets=WAIT_BUCKETS, registry=r)
        self.run_seconds = Histogram("webui_api_run_seconds", "Time a job ran on the device",
                                     ["route"], buckets=RUN_BUCKETS, registry=r)
        self.steps_per_second = Histogram("webui_api_steps_per_second", "Sampling steps x images per second of a job",
                                          ["route"], buckets=STEPS_BUCKETS, registry=r)
        self.batch_size = Histogram("webui_api_batch_size", "Images sampled together in one UNet batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.errors = Counter("webui_api_errors", "Error responses by error type and status",
                              ["type", "status"], registry=r)
        self.cache = Counter("webui_api_result_cache", "Result cache lookups", ["result"], registry=r)
        self.generations = Counter("webui_api_generations", "Generation requests answered", ["route"], registry=r)
        self.requests = Counter("webui_api_requests", "API responses by route group and status",
                                ["group", "status"], registry=r)

    # sources read at scrape time ---------------------------------------------------------

    def track_queue_depth(self, read: Callable[[], float]) -> None:
        self.queue_depth.set_function(read)

    def track_tasks_pending(self, read: Callable[[], float]) -> None:
        self.tasks_pending.set_function(read)

    def track_gpus(self, read: Callable[[], list[Any]]) -> None:
        """Per-GPU gauges read at scrape time from `read()` (gpu_health.DeviceReading list)."""
        self.registry.register(_GpuCollector(read))

    # reports --------------------------------------------------------------------------------

    def observe_job(self, route: str, wait_seconds: float, run_seconds: float, steps: int) -> None:
        """One finished job: its queue wait, its device time, and the sampling speed it reached."""
        self.wait_seconds.labels(route).observe(max(0.0, wait_seconds))
        self.run_seconds.labels(route).observe(max(0.0, run_seconds))
        if run_seconds > 0 and steps > 0:
            self.steps_per_second.labels(route).observe(steps / run_seconds)

    def observe_batch(self, size: int) -> None:
        """How many images one UNet batch carried (reported by the batching scheduler/engine)."""
        self.batch_size.observe(size)

    def count_error(self, error_type: str, status: int) -> None:
        self.errors.labels(error_type, str(status)).inc()

    def count_cache(self, hit: bool) -> None:
        self.cache.labels("hit" if hit else "miss").inc()

    def count_generation(self, route: str) -> None:
        self.generations.labels(route).inc()

    def count_request(self, group: str, status: int) -> None:
        self.requests.labels(group, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


GPU_GAUGES = (  # (metric name, help, DeviceReading field)
    ("webui_api_gpu_memory_used_bytes", "GPU memory in use (all processes)", "memory_used_bytes"),
    ("webui_api_gpu_memory_total_bytes", "GPU memory in total", "memory_total_bytes"),
    ("webui_api_gpu_utilization_ratio", "GPU busy fraction over the driver's last sample period", "utilization_ratio"),
    ("webui_api_gpu_temperature_celsius", "GPU temperature", "temperature_c"),
    ("webui_api_gpu_power_watts", "GPU power draw", "power_watts"),
)


class _GpuCollector:
    """Yields one gauge family per GPU figure, labelled by device index and name."""

    def __init__(self, read: Callable[[], list[Any]]) -> None:
        self._read = read

    def describe(self) -> list[Any]:
        return []  # collected lazily: the devices are only known at scrape time

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        readings = self._read()
        for name, help_text, attribute in GPU_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=["gpu", "name"])
            for reading in readings:
                value = getattr(reading, attribute)
                if value is not None:
                    family.add_metric([str(reading.index), reading.name], float(value))
            yield family

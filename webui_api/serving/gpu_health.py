"""GPU health: per-device memory, utilisation, temperature and power, and admission throttling
when a device runs hot.

Readings come from a `Sensor`: `NvmlSensor` (nvidia-ml-py, an optional dependency: without it
or without an NVIDIA driver it reports no devices) or, in tests, any object with `read()`. The
`ThermalGate` refuses new generations (503 + Retry-After) while any device is at or above the
configured temperature, and admits again once every device has cooled `hysteresis_c` below it,
so admission does not flap at the threshold. Readings are cached for `max_age_s` so a burst of
requests costs one sensor read.

No torch here: the scheduler and the metrics read this module, the engine does not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from webui_api.errors import ServiceUnavailable


@dataclass(frozen=True)
class DeviceReading:
    """One device at one moment; None where the driver does not report a figure."""

    index: int
    name: str
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_ratio: float | None = None  # 0..1, the GPU's busy fraction over the driver's last sample period
    temperature_c: float | None = None
    power_watts: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sensor(Protocol):
    def read(self) -> list[DeviceReading]: ...


class NoSensor:
    """No GPU telemetry (no NVIDIA driver or no nvidia-ml-py)."""

    def read(self) -> list[DeviceReading]:
        return []


class NvmlSensor:
    """NVIDIA devices through NVML (the `pynvml` module of nvidia-ml-py)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._lock = threading.Lock()

    @classmethod
    def open(cls) -> Sensor:
        """NVML when it is installed and a driver answers; NoSensor otherwise."""
        try:
            import pynvml  # type: ignore[import-not-found]  # optional: the `gpu` extra
        except ImportError:
            return NoSensor()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return NoSensor()
        return cls(pynvml)

    def read(self) -> list[DeviceReading]:
        nvml = self._nvml
        with self._lock:
            return [self._device(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]

    @staticmethod
    def _device(nvml: Any, index: int) -> DeviceReading:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)

        def figure(read: Callable[[], Any]) -> Any:
            try:
                return read()
            except nvml.NVMLError:  # this figure is not supported on this device
                return None

        memory = figure(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        utilization = figure(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        power_mw = figure(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        name = figure(lambda: nvml.nvmlDeviceGetName(handle))
        return DeviceReading(
            index=index,
            name=name.decode() if isinstance(name, bytes) else str(name or f"GPU {index}"),
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=None if memory is None else int(memory.total),
            utilization_ratio=None if utilization is None else utilization.gpu / 100.0,
            temperature_c=figure(lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
            power_watts=None if power_mw is None else power_mw / 1000.0,
        )


class DeviceTooHot(ServiceUnavailable):
    """A GPU is at or above --gpu-max-temp: new generations wait outside (503 + Retry-After)."""

    def __init__(self, reading: DeviceReading, limit_c: float, retry_after: int) -> None:
        super().__init__(
            f"GPU {reading.index} ({reading.name}) is at {reading.temperature_c:g} °C, at or above the "
            f"--gpu-max-temp limit of {limit_c:g} °C; new generations are refused until it cools. "
            f"Retry in about {retry_after} s"
        )
        self.headers = {"Retry-After": str(retry_after)}


@dataclass
class GpuHealth:
    """Cached readings of one sensor, and the thermal admission gate built on them."""

    sensor: Sensor
    max_temp_c: float | None = None  # None: never throttle
    hysteresis_c: float = 5.0
    retry_after_s: int = 10
    max_age_s: float = 1.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[float, list[DeviceReading]] | None = None
        self._throttling = False

    def readings(self) -> list[DeviceReading]:
        """The sensor's devices, read at most once per `max_age_s`."""
        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._cached[0] >= self.max_age_s:
                self._cached = (now, self.sensor.read())
            return list(self._cached[1])

    @property
    def throttling(self) -> bool:
        return self._throttling

    def check_admission(self) -> None:
        """Raise DeviceTooHot while a device is hot (or has not cooled below the hysteresis band)."""
        if self.max_temp_c is None:
            return
        hot = self._hottest()
        if hot is None or hot.temperature_c is None:
            self._throttling = False
            return
        resume_below = self.max_temp_c - self.hysteresis_c
        self._throttling = hot.temperature_c >= (resume_below if self._throttling else self.max_temp_c)
        if self._throttling:
            raise DeviceTooHot(hot, self.max_temp_c, self.retry_after_s)

    def _hottest(self) -> DeviceReading | None:
        known = [r for r in self.readings() if r.temperature_c is not None]
        return max(known, key=lambda r: r.temperature_c or 0.0) if known else None

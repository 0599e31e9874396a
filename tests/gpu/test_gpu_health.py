"""GPU telemetry and the thermal admission gate, with a fake sensor (no GPU, no NVML)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from webui_api.serving import gpu_health
from webui_api.serving.gpu_health import DeviceReading, DeviceTooHot, GpuHealth, NoSensor
from webui_api.serving.metrics import Metrics

COOL = DeviceReading(0, "Fake H100", 10 * 2**30, 80 * 2**30, 0.5, 60.0, 300.0)


class FakeSensor:
    def __init__(self, *readings: DeviceReading) -> None:
        self.readings = list(readings)
        self.reads = 0

    def read(self) -> list[DeviceReading]:
        self.reads += 1
        return list(self.readings)

    def heat(self, temperature: float, index: int = 0) -> None:
        self.readings[index] = replace(self.readings[index], temperature_c=temperature)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_gate_refuses_at_the_limit_and_admits_after_cooling_past_the_hysteresis() -> None:
    sensor, clock = FakeSensor(COOL, replace(COOL, index=1, temperature_c=50.0)), Clock()
    health = GpuHealth(sensor, max_temp_c=85.0, hysteresis_c=5.0, retry_after_s=7, max_age_s=0.0, clock=clock)
    health.check_admission()
    sensor.heat(85.0)
    with pytest.raises(DeviceTooHot) as refused:
        health.check_admission()
    assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "7"}
    assert "GPU 0 (Fake H100) is at 85" in refused.value.detail
    sensor.heat(82.0)  # below the limit but inside the hysteresis band: still refused
    with pytest.raises(DeviceTooHot):
        health.check_admission()
    sensor.heat(79.5)
    health.check_admission()
    assert not health.throttling


def test_no_limit_or_no_sensor_never_throttles() -> None:
    hot = FakeSensor(replace(COOL, temperature_c=120.0))
    GpuHealth(hot, max_temp_c=None).check_admission()
    GpuHealth(NoSensor(), max_temp_c=50.0).check_admission()
    GpuHealth(FakeSensor(replace(COOL, temperature_c=None)), max_temp_c=50.0).check_admission()


def test_readings_are_cached_for_max_age() -> None:
    sensor, clock = FakeSensor(COOL), Clock()
    health = GpuHealth(sensor, max_age_s=1.0, clock=clock)
    health.readings()
    health.readings()
    clock.now = 1.5
    health.readings()
    assert sensor.reads == 2


def test_metrics_expose_every_figure_per_device() -> None:
    metrics = Metrics()
    metrics.track_gpus(FakeSensor(COOL, replace(COOL, index=1, power_watts=None)).read)
    text = metrics.render()[0].decode()
    assert 'webui_api_gpu_temperature_celsius{gpu="0",name="Fake H100"} 60.0' in text
    assert 'webui_api_gpu_memory_total_bytes{gpu="1",name="Fake H100"}' in text
    assert 'webui_api_gpu_utilization_ratio{gpu="0",name="Fake H100"} 0.5' in text
    assert 'webui_api_gpu_power_watts{gpu="0"' in text and 'webui_api_gpu_power_watts{gpu="1"' not in text


def test_nvml_missing_means_no_sensor(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name: str, *args: object, **kwargs: object) -> object:
        if name == "pynvml":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    assert isinstance(gpu_health.NvmlSensor.open(), NoSensor)


def test_hot_gpu_gets_503_from_the_server_and_memory_lists_gpus(engine, make_client, monkeypatch) -> None:
    sensor = FakeSensor(replace(COOL, temperature_c=91.0))
    monkeypatch.setattr(gpu_health.NvmlSensor, "open", classmethod(lambda cls: sensor))
    client = make_client(gpu_max_temp=90.0)
    payload = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64}
    refused = client.post("/sdapi/v1/txt2img", json=payload)
    assert refused.status_code == 503 and "is at 91 °C" in refused.json()["detail"]
    assert refused.headers["Retry-After"] == "10"
    memory = client.get("/sdapi/v1/memory").json()
    assert memory["gpus"][0]["temperature_c"] == 91.0 and {"ram", "cuda"} <= set(memory)
    sensor.heat(60.0)
    import time

    time.sleep(1.1)  # the cached reading expires
    assert client.post("/sdapi/v1/txt2img", json=payload).status_code == 200


def test_cli_flag(tmp_path) -> None:
    from webui_api.cli import parse_args

    assert parse_args(["--data-dir", str(tmp_path), "--gpu-max-temp", "83"], {})[0].gpu_max_temp == 83.0
    assert parse_args(["--data-dir", str(tmp_path)], {})[0].gpu_max_temp is None

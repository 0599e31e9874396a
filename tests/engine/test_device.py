"""Device policy: device/dtype resolution, shared with the postprocess models (no import cycle)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from webui_api.engine.device import DevicePolicy, resolve_device, resolve_dtype


def test_policy_on_cpu_keeps_models_in_place_and_no_half_vae_means_fp32():
    policy = DevicePolicy.resolve("cpu", "fp16", no_half_vae=True)
    assert policy.device == torch.device("cpu") and policy.dtype == torch.float16
    assert policy.vae_dtype == torch.float32 and not policy.parks_in_ram
    assert DevicePolicy.resolve("cpu", "auto").vae_dtype == torch.float32


def test_gpu_policies_park_models_in_ram():
    policy = DevicePolicy(torch.device("cuda:0"), torch.float16, torch.float16)
    assert policy.parks_in_ram and resolve_dtype("auto", policy.device) == torch.float16


def test_bad_device_and_dtype_strings_name_what_is_allowed():
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu please")
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_memory_reports_ram_and_cuda_blocks():
    body = DevicePolicy.resolve("cpu").memory()
    assert set(body) == {"ram", "cuda"}
    assert "error" in body["ram"] or body["ram"]["total"] >= body["ram"]["used"] > 0


def test_upscalers_resolve_devices_without_importing_the_engine_facade():
    code = (
        "import sys, webui_api.postprocess.upscale as u, webui_api.engine.device as d; d.resolve_device('cpu'); "
        "print(any(m in sys.modules for m in ('webui_api.engine.facade', 'webui_api.engine.model_store')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

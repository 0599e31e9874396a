"""Pinned, non-blocking parking and channels_last: pure decisions, applied where models move."""

from __future__ import annotations

import pytest
import torch

from webui_api.cli import parse_args
from webui_api.engine.device import DevicePolicy
from webui_api.engine.models import build_embedded_model
from webui_api.engine.offload import ModuleSwapper, OffloadPlan
from webui_api.engine.transfers import TransferPlan, park_pinned


@pytest.mark.parametrize(
    ("device", "weights", "mode", "expected"),
    [
        ("cuda", torch.float16, "auto", TransferPlan(pin_memory=True, non_blocking=True, channels_last=True)),
        ("cuda", torch.bfloat16, "auto", TransferPlan(True, True, True)),
        ("cuda", torch.float32, "auto", TransferPlan(True, True, False)),
        ("cuda", torch.float32, "on", TransferPlan(True, True, True)),
        ("cuda", torch.float16, "off", TransferPlan(True, True, False)),
        ("cpu", torch.float32, "auto", TransferPlan(False, False, False)),
        ("cpu", torch.bfloat16, "on", TransferPlan(False, False, False)),  # never on the CPU
        ("mps", torch.float16, "auto", TransferPlan(False, False, False)),
    ],
)
def test_plan_per_device(device: str, weights: torch.dtype, mode: str, expected: TransferPlan) -> None:
    assert TransferPlan.for_device(device, weights, mode) == expected


def test_policy_resolves_the_plan_and_refuses_unknown_modes() -> None:
    assert DevicePolicy.resolve("cpu").transfers == TransferPlan(False, False, False)
    assert DevicePolicy.resolve("cuda", "fp16").transfers == TransferPlan(True, True, True)
    assert DevicePolicy.resolve("cuda", "fp16", channels_last="off").transfers.channels_last is False
    with pytest.raises(ValueError, match="--channels-last"):
        TransferPlan.for_device("cuda", torch.float16, "always")


def test_flag_reaches_the_policy(tmp_path) -> None:
    from webui_api.engine.facade import Engine

    settings, _ = parse_args(["--data-dir", str(tmp_path), "--use-cpu", "all", "--channels-last", "on"], {})
    assert settings.channels_last == "on"
    assert Engine.from_settings(settings).policy.transfers == TransferPlan(False, False, False)  # CPU: off
    assert parse_args(["--data-dir", str(tmp_path)], {})[0].channels_last == "auto"


def test_park_pinned_copies_every_tensor_through_the_host_allocator() -> None:
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    module.to(memory_format=torch.channels_last)
    before = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    allocated: list[tuple[int, ...]] = []

    def host(tensor: torch.Tensor) -> torch.Tensor:
        allocated.append(tuple(tensor.shape))
        return torch.empty_like(tensor, device="cpu")

    park_pinned(module, allocate=host)
    assert len(allocated) == len(before)  # weights, biases and BatchNorm's buffers
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
    assert module[0].weight.is_contiguous(memory_format=torch.channels_last)  # layout survives parking


def test_park_pinned_falls_back_to_pageable_memory(caplog) -> None:
    module = torch.nn.Linear(2, 2)
    weight = module.weight.detach().clone()

    def no_pinned_memory(tensor: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: out of memory (cudaHostAlloc)")

    park_pinned(module, allocate=no_pinned_memory)
    torch.testing.assert_close(module.weight.detach(), weight)
    assert "pinned memory unavailable" in caplog.text


def test_cpu_plan_moves_with_plain_to_and_cuda_plan_parks_pinned(monkeypatch) -> None:
    from webui_api.engine import transfers

    parked: list[torch.nn.Module] = []
    monkeypatch.setattr(transfers, "park_pinned", lambda module: parked.append(module))
    module = torch.nn.Linear(2, 2)
    TransferPlan(False, False, False).move(module, torch.device("cpu"))
    assert parked == []
    TransferPlan(True, True, False).move(module, torch.device("cpu"))
    assert parked == [module]


def test_swapper_and_model_moves_use_the_plan() -> None:
    model = build_embedded_model()
    moves: list[tuple[str, str]] = []

    def mover(module: torch.nn.Module, device: torch.device) -> None:
        moves.append((type(module).__name__, torch.device(device).type))
        module.to(device)

    model.move_to(torch.device("cpu"), mover)
    assert {name for name, _ in moves} >= {"UNet2DConditionModel", "AutoencoderKL"}
    moves.clear()
    swapper = ModuleSwapper(torch.device("cpu"), mover=mover)
    swapper.install(model.modules(), OffloadPlan("model"))
    swapper.activate("unet")
    assert ("UNet2DConditionModel", "cpu") in moves
    swapper.remove()


def test_channels_last_formats_4d_weights_only_when_planned() -> None:
    unet = build_embedded_model().unet
    TransferPlan(False, False, False).format(unet)
    assert unet.conv_in.weight.is_contiguous()
    TransferPlan(True, True, True).format(unet)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not unet.conv_in.weight.is_contiguous()

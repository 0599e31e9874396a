"""The precision policy per A1111 flag, decided without a GPU (engine/precision.py, cli)."""

from __future__ import annotations

import pytest
import torch

from webui_api.cli import parse_args
from webui_api.engine.denoiser import UNetRunner
from webui_api.engine.facade import Engine
from webui_api.engine.models import build_embedded_model
from webui_api.engine.precision import HALF_CONFLICT, PrecisionConflict, PrecisionPolicy


def _cuda(**flags: object) -> PrecisionPolicy:
    return PrecisionPolicy.resolve("cuda", **flags)  # type: ignore[arg-type]


def test_default_on_cuda_is_fp16_weights_and_vae_under_autocast() -> None:
    policy = _cuda()
    assert (policy.weights, policy.vae, policy.inference) == (torch.float16, torch.float16, torch.float16)
    assert policy.autocast and not policy.upcast_sampling and policy.half_vae


def test_default_on_cpu_is_float32_without_autocast() -> None:
    policy = PrecisionPolicy.resolve("cpu")
    assert (policy.weights, policy.vae, policy.inference) == (torch.float32,) * 3
    assert not policy.autocast and not policy.half_vae


def test_no_half_is_float32_everywhere() -> None:
    policy = _cuda(dtype="float32")
    assert (policy.weights, policy.vae) == (torch.float32, torch.float32)
    assert not policy.autocast


def test_no_half_vae_keeps_half_unet_and_float32_vae() -> None:
    policy = _cuda(no_half_vae=True)
    assert (policy.weights, policy.vae) == (torch.float16, torch.float32)
    assert policy.autocast and not policy.half_vae


def test_upcast_sampling_turns_autocast_off() -> None:
    policy = _cuda(upcast_sampling=True)
    assert policy.weights == torch.float16 and policy.upcast_sampling and not policy.autocast


def test_upcast_sampling_means_nothing_in_float32() -> None:
    assert not _cuda(dtype="float32", upcast_sampling=True).upcast_sampling


def test_precision_half_is_pure_fp16_without_autocast_even_on_cpu() -> None:
    for device in ("cuda", "cpu"):
        policy = PrecisionPolicy.resolve(device, precision="half")
        assert (policy.weights, policy.vae, policy.inference) == (torch.float16,) * 3
        assert not policy.autocast


@pytest.mark.parametrize("flags", [{"dtype": "float32"}, {"no_half_vae": True}])
def test_precision_half_conflicts_like_a1111(flags: dict[str, object]) -> None:
    with pytest.raises(PrecisionConflict, match="conflict with --precision half"):
        _cuda(precision="half", **flags)


def test_bf16_weights_keep_a_bf16_vae_and_autocast_in_bf16() -> None:
    policy = _cuda(dtype="bf16")
    assert (policy.weights, policy.vae) == (torch.bfloat16, torch.bfloat16) and policy.autocast


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(PrecisionConflict):
        _cuda(precision="quarter")


def test_cli_flags_reach_settings(tmp_path) -> None:
    settings, _ = parse_args(["--data-dir", str(tmp_path), "--upcast-sampling", "--no-half-vae", "--medvram"], {})
    assert (settings.precision, settings.upcast_sampling, settings.no_half_vae) == ("autocast", True, True)
    assert settings.vram_mode == "medvram"
    settings, _ = parse_args(["--data-dir", str(tmp_path), "--lowvram", "--medvram", "--precision", "full"], {})
    assert (settings.vram_mode, settings.precision, settings.dtype) == ("lowvram", "full", "float32")


def test_cli_refuses_precision_half_with_no_half(tmp_path) -> None:
    with pytest.raises(ValueError, match=HALF_CONFLICT):
        parse_args(["--data-dir", str(tmp_path), "--precision", "half", "--no-half"], {})


def test_engine_loads_components_per_policy() -> None:
    engine = Engine(device="cpu", dtype="bf16", no_half_vae=True)
    assert (engine.dtype, engine.load_options.vae_dtype) == (torch.bfloat16, torch.float32)
    assert engine.policy.autocast and engine.policy.precision is not None


def test_unet_runs_under_autocast_only_when_the_policy_says(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    model = build_embedded_model("cpu", torch.bfloat16)
    original = model.unet.forward

    def recording_forward(*args: object, **kwargs: object) -> object:
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", recording_forward)
    x = torch.zeros(2, 4, 8, 8)
    cond = torch.zeros(2, 77, model.text_encoder.config.hidden_size)
    from webui_api.engine.denoiser import CondBatch

    for autocast in (False, True):
        model.autocast = autocast
        out = UNetRunner(model)(x, torch.tensor([10.0, 10.0]), CondBatch.of(cond))
        assert out.dtype == torch.float32
    assert seen == [False, True]


def test_loaded_models_carry_the_policy() -> None:
    model = Engine(device="cpu", dtype="bf16", no_half_vae=True).load()
    assert model.autocast and model.dtype == torch.bfloat16
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    assert next(model.vae.parameters()).dtype == torch.float32
    assert not Engine(device="cpu").load().autocast

"""--compile wires through to an in-place torch.compile of the UNet, warmed up at load."""

from __future__ import annotations

import pytest
import torch

from webui_api.cli import parse_args
from webui_api.engine.compile import CompilePolicy, is_compiled
from webui_api.engine.facade import Engine
from webui_api.engine.models import build_embedded_model


def test_flags_reach_the_engine(tmp_path) -> None:
    settings, _ = parse_args(["--data-dir", str(tmp_path), "--compile", "--compile-mode", "reduce-overhead"], {})
    assert (settings.compile_unet, settings.compile_mode) == (True, "reduce-overhead")
    engine = Engine.from_settings(settings)
    assert engine.models.setup.compile_policy == CompilePolicy(True, "reduce-overhead")
    default, _ = parse_args(["--data-dir", str(tmp_path)], {})
    assert not Engine.from_settings(default).models.setup.compile_policy.enabled


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        CompilePolicy(True, "turbo")


def test_off_compiles_nothing() -> None:
    model = build_embedded_model()
    assert not CompilePolicy().apply(model) and not is_compiled(model.unet)


@pytest.mark.slow
def test_a_tiny_unet_compiles_in_place_and_gives_the_eager_result() -> None:
    model = build_embedded_model()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0, 500.0])
    with torch.inference_mode():
        eager = model.unet(x, t, encoder_hidden_states=context).sample
    assert CompilePolicy(True, backend="eager").apply(model)  # dynamo traces; no C++ toolchain needed
    assert is_compiled(model.unet) and not CompilePolicy(True, backend="eager").apply(model)  # once
    with torch.inference_mode():
        compiled = model.unet(x, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(compiled, eager)


@pytest.mark.slow
def test_the_engine_compiles_at_load() -> None:
    engine = Engine(device="cpu", compile_policy=CompilePolicy(True, backend="eager"))
    assert is_compiled(engine.load().unet)

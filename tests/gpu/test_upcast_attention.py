"""A1111's option upcast_attn: float32 attention in a half-precision UNet, per job."""

from __future__ import annotations

import pytest
import torch

from tests.engine.helpers import make_job
from webui_api.engine.attention import UpcastAttnProcessor, apply_attention_upcast, wants_attention_upcast
from webui_api.engine.models import build_embedded_model
from webui_api.engine_options import EngineOptions


@pytest.fixture(scope="module")
def bf16_model():
    model = build_embedded_model()
    model.unet.to(torch.bfloat16)
    return model


def unet_inputs(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    dim = model.unet.config.cross_attention_dim
    latents = torch.randn(2, 4, 8, 8, dtype=torch.bfloat16)
    context = torch.randn(2, 77, dim, dtype=torch.bfloat16) * 4  # large activations, as q·k overflow needs
    return latents, torch.tensor([500, 500]), context


def processor_types(model) -> set[str]:
    return {type(processor).__name__ for processor in model.unet.attn_processors.values()}


def test_option_maps_from_a1111s_name() -> None:
    assert EngineOptions.from_options({"upcast_attn": True}).upcast_attn is True
    assert EngineOptions.from_options({}).upcast_attn is False
    assert wants_attention_upcast(True, torch.float16) and wants_attention_upcast(True, torch.bfloat16)
    assert not wants_attention_upcast(True, torch.float32) and not wants_attention_upcast(False, torch.float16)


def test_bf16_unet_runs_float32_attention_while_the_option_is_on(bf16_model) -> None:
    default = processor_types(bf16_model)
    latents, timestep, context = unet_inputs(bf16_model)
    with torch.no_grad():
        plain = bf16_model.unet(latents, timestep, encoder_hidden_states=context).sample
        restore = apply_attention_upcast(bf16_model, True)
        try:
            assert processor_types(bf16_model) == {"UpcastAttnProcessor"} != default
            upcast = bf16_model.unet(latents, timestep, encoder_hidden_states=context).sample
        finally:
            restore.restore()
    assert processor_types(bf16_model) == default  # put back after the job
    assert upcast.dtype == torch.bfloat16 and torch.isfinite(upcast).all()
    # same network, attention computed more precisely: close to, not identical with, the bf16 result
    assert not torch.equal(upcast, plain)
    torch.testing.assert_close(upcast.float(), plain.float(), atol=0.1, rtol=0.05)


def test_upcast_processor_matches_float32_attention() -> None:
    """In float32 the processor computes what diffusers' default processor computes."""
    model = build_embedded_model()
    latents, timestep, context = (t.float() if t.is_floating_point() else t for t in unet_inputs(model, 1))
    with torch.no_grad():
        reference = model.unet(latents, timestep, encoder_hidden_states=context).sample
        model.unet.set_attn_processor(UpcastAttnProcessor())
        ours = model.unet(latents, timestep, encoder_hidden_states=context).sample
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_float32_models_and_option_off_are_untouched(bf16_model) -> None:
    fp32 = build_embedded_model()
    before = fp32.unet.attn_processors
    apply_attention_upcast(fp32, True)
    assert fp32.unet.attn_processors == before
    default = processor_types(bf16_model)
    apply_attention_upcast(bf16_model, False)
    assert processor_types(bf16_model) == default


def test_engine_job_with_the_option_runs_and_restores() -> None:
    from tests.engine.helpers import RecordingObserver
    from webui_api.engine.facade import Engine
    from webui_api.progress import CancelToken

    engine = Engine(device="cpu", dtype="bf16")
    engine.load()
    model = engine.models.loaded
    default = processor_types(model)
    seen: list[set[str]] = []
    real_forward = model.unet.forward

    def recording_forward(*args, **kwargs):
        seen.append(processor_types(model))
        return real_forward(*args, **kwargs)

    model.unet.forward = recording_forward
    result = engine.txt2img(make_job(steps=1, options={"upcast_attn": True}), RecordingObserver(), CancelToken())
    assert result.images and seen and all(types == {"UpcastAttnProcessor"} for types in seen)
    assert processor_types(model) == default

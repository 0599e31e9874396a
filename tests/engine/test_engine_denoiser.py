"""The UNet wrapper (CompVis eps denoiser) and classifier-free guidance."""

from __future__ import annotations

import pytest
import torch

from webui_api.engine.conditioning import encode_prompts
from webui_api.engine.denoiser import CFGDenoiser, CompVisDenoiser, SamplingInterrupted
from webui_api.progress import CancelToken


@pytest.fixture(scope="module")
def conds(tiny_model):
    with torch.inference_mode():
        return encode_prompts(tiny_model, ["a cat"]), encode_prompts(tiny_model, [""])


def _x_sigma():
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3.0
    return x, torch.tensor([3.0])


def test_sigma_range(tiny_model):
    inner = CompVisDenoiser(tiny_model)
    assert abs(inner.sigma_min - 0.029167533) < 1e-7
    assert abs(inner.sigma_max - 14.614642) < 1e-5


@torch.inference_mode()
def test_eps_wrapper_formula(tiny_model, conds):
    inner = CompVisDenoiser(tiny_model)
    x, sigma = _x_sigma()
    t = inner.log_sigmas  # the UNet must see the fractional timestep of sigma = 3.0
    low = int((t <= torch.log(sigma)).sum()) - 1
    frac = float((t[low] - torch.log(sigma)) / (t[low] - t[low + 1]))
    eps = tiny_model.unet(x / (1 + 9.0) ** 0.5, torch.tensor([low + frac]), encoder_hidden_states=conds[0]).sample
    assert torch.allclose(inner(x, sigma, conds[0]), x - 3.0 * eps, atol=1e-5)


@torch.inference_mode()
def test_cfg_combines_cond_and_uncond(tiny_model, conds):
    inner = CompVisDenoiser(tiny_model)
    x, sigma = _x_sigma()
    c, u = inner(x, sigma, conds[0]), inner(x, sigma, conds[1])
    cfg = CFGDenoiser(inner, CancelToken())
    out = cfg(x, sigma, cond=conds[0], uncond=conds[1], cond_scale=7.5)
    assert torch.allclose(out, u + (c - u) * 7.5, atol=1e-4)
    assert torch.allclose(cfg.last.cond_denoised, c, atol=1e-5)
    assert cfg.step == 1


@torch.inference_mode()
def test_cfg_with_different_token_lengths(tiny_model, conds):
    inner = CompVisDenoiser(tiny_model)
    x, sigma = _x_sigma()
    long_uncond = torch.cat([conds[1], conds[1]], dim=1)  # 154 tokens vs 77
    out = CFGDenoiser(inner, CancelToken())(x, sigma, cond=conds[0], uncond=long_uncond, cond_scale=5.0)
    c, u = inner(x, sigma, conds[0]), inner(x, sigma, long_uncond)
    assert torch.allclose(out, u + (c - u) * 5.0, atol=1e-4)


@pytest.mark.parametrize("flag", ["interrupt", "skip"])
def test_cancel_raises_before_the_unet_runs(tiny_model, conds, flag):
    cancel = CancelToken()
    getattr(cancel, flag)()
    cfg = CFGDenoiser(CompVisDenoiser(tiny_model), cancel)
    x, sigma = _x_sigma()
    with pytest.raises(SamplingInterrupted):
        cfg(x, sigma, cond=conds[0], uncond=conds[1], cond_scale=7.0)
    assert cfg.step == 0 and cfg.last is None


@torch.inference_mode()
def test_ngms_skips_uncond_on_odd_calls_below_threshold(tiny_model, conds):
    inner = CompVisDenoiser(tiny_model)
    x, sigma = _x_sigma()
    cfg = CFGDenoiser(inner, CancelToken())
    args = {"cond": conds[0], "uncond": conds[1], "cond_scale": 7.0, "s_min_uncond": 5.0}
    cfg(x, sigma, **args)  # call 0: even, full CFG
    assert cfg.last.uncond_denoised is not None
    odd = cfg(x, sigma, **args)  # call 1: odd and sigma 3 < 5 -> cond only
    assert cfg.last.uncond_denoised is None
    assert torch.allclose(odd, inner(x, sigma, conds[0]), atol=1e-5)

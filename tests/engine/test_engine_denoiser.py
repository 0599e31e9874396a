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


# --- BatchConditioning: AND weights, prompt-schedule variants, skipping the uncond ---------------

from dataclasses import replace  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from webui_api.engine.cond_types import BatchConditioning, ComposableCond, CondTensors, ScheduledCond  # noqa: E402
from webui_api.engine.denoiser import (  # noqa: E402
    CompVisVDenoiser,
    CondBatch,
    GuidanceOptions,
    InpaintBlend,
    LCMDenoiser,
    TimestepDenoiser,
    make_inner,
)


class RecordingInner:
    """Wraps an inner denoiser; records each call's batch size and conditioning tensor."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __call__(self, x, sigma, cond, image_cond=None):
        self.calls.append((x.shape[0], CondBatch.of(cond).crossattn, x.clone()))
        return self.inner(x, sigma, cond, image_cond)

    def to_x0(self, x, out, sigma):
        return self.inner.to_x0(x, out, sigma)


def _single(t):
    return ScheduledCond(((0, CondTensors(t)),))


@pytest.fixture(scope="module")
def three(tiny_model):
    with torch.inference_mode():
        return [encode_prompts(tiny_model, [p])[0] for p in ("a cat", "a dog", "")]


@torch.inference_mode()
def test_and_weights_combine_like_a1111_in_one_unet_batch(tiny_model, three):
    cat, dog, empty = three
    inner = CompVisDenoiser(tiny_model)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3.0
    sigma = torch.tensor([3.0, 3.0])
    conditioning = BatchConditioning(
        cond=(ComposableCond(((_single(cat), 1.0), (_single(dog), 0.5))), ComposableCond(((_single(dog), 1.0),))),
        uncond=(_single(empty), _single(empty)),
    )
    recorder = RecordingInner(inner)
    out = CFGDenoiser(recorder, CancelToken())(x, sigma, cond=conditioning, cond_scale=7.0)
    assert [c[0] for c in recorder.calls] == [5]  # rows: x0 twice, x1 once, then 2 uncond rows
    assert torch.equal(recorder.calls[0][2][:3], torch.stack([x[0], x[0], x[1]]))

    def d(i, t):
        return inner(x[i : i + 1], sigma[i : i + 1], t[None])

    u0, u1 = d(0, empty), d(1, empty)
    expected0 = u0 + (d(0, cat) - u0) * 7.0 + (d(0, dog) - u0) * 3.5
    expected1 = u1 + (d(1, dog) - u1) * 7.0
    assert torch.allclose(out, torch.cat([expected0, expected1]), atol=1e-4)


@torch.inference_mode()
def test_prompt_schedule_variant_follows_the_call_counter(tiny_model, three):
    cat, dog, empty = three
    recorder = RecordingInner(CompVisDenoiser(tiny_model))
    scheduled = ScheduledCond(((1, CondTensors(cat)), (3, CondTensors(dog))))
    conditioning = BatchConditioning(cond=(ComposableCond(((scheduled, 1.0),)),), uncond=(_single(empty),))
    cfg = CFGDenoiser(recorder, CancelToken())
    x, sigma = _x_sigma()
    for _ in range(5):
        cfg(x, sigma, cond=conditioning, cond_scale=5.0)
    used = [call[1][0] for call in recorder.calls]
    expected = [cat, cat, dog, dog, cat]  # calls 0-1 -> end 1, 2-3 -> end 3, past the end -> first variant
    assert all(torch.equal(u, e) for u, e in zip(used, expected, strict=True))


@torch.inference_mode()
def test_skip_early_cond_drops_the_uncond_for_early_calls(tiny_model, conds):
    recorder = RecordingInner(CompVisDenoiser(tiny_model))
    cfg = CFGDenoiser(recorder, CancelToken(), GuidanceOptions(total_steps=10, skip_early_cond=0.2))
    x, sigma = _x_sigma()
    outs = [cfg(x, sigma, cond=conds[0], uncond=conds[1], cond_scale=7.0) for _ in range(4)]
    assert [c[0] for c in recorder.calls] == [1, 1, 1, 2]  # 0/10, 1/10, 2/10 <= 0.2 skip; 3/10 does not
    assert torch.allclose(outs[0], recorder.inner(x, sigma, conds[0]), atol=1e-5)
    assert cfg.last.uncond_denoised is not None and cfg.step == 4


def test_skip_early_cond_needs_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        GuidanceOptions(skip_early_cond=0.3)


@torch.inference_mode()
def test_s_min_uncond_all_skips_every_call(tiny_model, conds):
    recorder = RecordingInner(CompVisDenoiser(tiny_model))
    cfg = CFGDenoiser(recorder, CancelToken(), GuidanceOptions(s_min_uncond_all=True))
    x, sigma = _x_sigma()
    for _ in range(2):
        cfg(x, sigma, cond=conds[0], uncond=conds[1], cond_scale=7.0, s_min_uncond=5.0)
    assert [c[0] for c in recorder.calls] == [1, 1]


@torch.inference_mode()
def test_batch_mismatch_is_loud(tiny_model, conds):
    x = torch.zeros(2, 4, 8, 8)
    with pytest.raises(ValueError, match="batch of 2"):
        CFGDenoiser(CompVisDenoiser(tiny_model), CancelToken())(x, torch.ones(2), cond=conds[0], uncond=conds[1],
                                                                 cond_scale=7.0)


# --- inpaint blend hook ------------------------------------------------------------------------


@torch.inference_mode()
def test_blend_after_denoising_mixes_the_x0_prediction(tiny_model, conds):
    x, sigma = _x_sigma()
    init = torch.full_like(x, 0.25)
    latmask = torch.zeros_like(x)
    latmask[..., :4] = 1.0  # repaint the left half
    blend = InpaintBlend.from_latent_mask(init, latmask)
    plain = CFGDenoiser(CompVisDenoiser(tiny_model), CancelToken())(x, sigma, cond=conds[0], uncond=conds[1],
                                                                     cond_scale=7.0)
    blended = CFGDenoiser(CompVisDenoiser(tiny_model), CancelToken(), blend=blend)(
        x, sigma, cond=conds[0], uncond=conds[1], cond_scale=7.0)
    assert torch.equal(blended[..., 4:], init[..., 4:])
    assert torch.allclose(blended[..., :4], plain[..., :4])


@torch.inference_mode()
def test_blend_before_denoising_mixes_x_for_timestep_samplers(tiny_model, conds):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    init = torch.zeros_like(x)
    latmask = torch.ones_like(x)
    latmask[..., 0, :] = 0.0  # keep the first row
    recorder = RecordingInner(TimestepDenoiser(tiny_model))
    cfg = CFGDenoiser(recorder, CancelToken(), GuidanceOptions(mask_before_denoising=True),
                      InpaintBlend.from_latent_mask(init, latmask))
    cfg(x, torch.tensor([500.0]), cond=conds[0], uncond=conds[1], cond_scale=7.0)
    seen = recorder.calls[0][2]
    assert torch.equal(seen[:, :, 0, :], torch.zeros_like(seen[:, :, 0, :]))
    assert torch.equal(seen[0, :, 1:], x[0, :, 1:])


# --- v-prediction, timestep and LCM wrappers ------------------------------------------------------


@torch.inference_mode()
def test_v_prediction_wrapper_formula(tiny_model, conds):
    v_model = replace(tiny_model, prediction_type="v_prediction")
    inner = make_inner(v_model, "sigmas")
    assert isinstance(inner, CompVisVDenoiser)
    x, sigma = _x_sigma()
    t = CompVisDenoiser(tiny_model)  # same table; the UNet output is now read as v
    v = tiny_model.unet(x / (1 + 9.0) ** 0.5, sigma_t(t, sigma), encoder_hidden_states=conds[0]).sample
    expected = v * (-3.0 / (1 + 9.0) ** 0.5) + x / (1 + 9.0)
    assert torch.allclose(inner(x, sigma, conds[0]), expected, atol=1e-5)


def sigma_t(inner, sigma):
    from samplers.schedules import sigma_to_t

    return sigma_to_t(sigma, inner.log_sigmas)


def test_unknown_prediction_type_is_loud(tiny_model):
    with pytest.raises(ValueError, match="prediction_type"):
        make_inner(replace(tiny_model, prediction_type="sample"), "sigmas")
    with pytest.raises(ValueError, match="kind"):
        make_inner(tiny_model, "flow")


@torch.inference_mode()
def test_timestep_wrapper_eps_and_v(tiny_model, conds):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([501.0])
    raw = tiny_model.unet(x, t, encoder_hidden_states=conds[0]).sample
    eps_inner = TimestepDenoiser(tiny_model)
    assert torch.allclose(eps_inner(x, t, conds[0]), raw, atol=1e-6)
    a = tiny_model.alphas_cumprod[501]
    assert torch.allclose(eps_inner.to_x0(x, raw, t), (x - (1 - a).sqrt() * raw) / a.sqrt(), atol=1e-6)
    v_inner = TimestepDenoiser(replace(tiny_model, prediction_type="v_prediction"))
    assert torch.allclose(v_inner(x, t, conds[0]), a.sqrt() * raw + (1 - a).sqrt() * x, atol=1e-6)


@torch.inference_mode()
def test_lcm_wrapper_table_and_quantised_timesteps(tiny_model, conds):
    inner = LCMDenoiser(tiny_model)
    acp = tiny_model.alphas_cumprod
    assert inner.sigmas.numel() == 50
    assert inner.sigma_max == pytest.approx(float(((1 - acp[999]) / acp[999]) ** 0.5), rel=1e-6)
    assert inner.sigma_min == pytest.approx(float(((1 - acp[19]) / acp[19]) ** 0.5), rel=1e-6)
    seen = []
    runner = inner.unet

    class Spy:
        def __call__(self, x, t, cond, image_cond=None):
            seen.append(t.clone())
            return runner(x, t, cond, image_cond)

    inner.unet = Spy()
    x, _ = _x_sigma()
    inner(x, torch.tensor([inner.sigma_max * 0.999]), conds[0])
    assert seen[0].tolist() == [999] and seen[0].dtype == torch.int64


# --- SDXL vector and inpainting channels reach the UNet -------------------------------------------


class FakeUNet:
    """Records what the runner passes; answers zeros with the latent's channel count."""

    def __init__(self, **config):
        self.config = SimpleNamespace(**config)
        self.calls = []

    def __call__(self, x, t, encoder_hidden_states, return_dict, **kwargs):
        self.calls.append({"x": x, "t": t, "ctx": encoder_hidden_states, **kwargs})
        return (torch.zeros(x.shape[0], 4, *x.shape[2:]),)


def test_sdxl_vector_becomes_added_cond_kwargs(tiny_model):
    unet = FakeUNet(addition_embed_type="text_time", projection_class_embeddings_input_dim=2816,
                    addition_time_embed_dim=256)
    inner = CompVisDenoiser(replace(tiny_model, unet=unet))
    pooled = torch.randn(2, 1280)
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2)
    cond = CondBatch(torch.zeros(2, 77, 2048), torch.cat([pooled, time_ids], dim=1))
    inner(torch.zeros(2, 4, 8, 8), torch.tensor([1.0, 1.0]), cond)
    added = unet.calls[0]["added_cond_kwargs"]
    assert torch.equal(added["text_embeds"], pooled) and torch.equal(added["time_ids"], time_ids)
    with pytest.raises(ValueError, match="SDXL conditioning"):
        inner(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), CondBatch(torch.zeros(1, 77, 2048)))


def test_sdxl_vectors_stack_with_unconds_through_cfg(tiny_model):
    unet = FakeUNet(addition_embed_type="text_time", projection_class_embeddings_input_dim=2816,
                    addition_time_embed_dim=256)
    inner = CompVisDenoiser(replace(tiny_model, unet=unet))
    row = ScheduledCond(((0, CondTensors(torch.zeros(77, 2048), torch.ones(1286))),))
    neg = ScheduledCond(((0, CondTensors(torch.zeros(77, 2048), torch.zeros(1286))),))
    conditioning = BatchConditioning(cond=(ComposableCond(((row, 1.0),)),), uncond=(neg,))
    CFGDenoiser(inner, CancelToken())(torch.zeros(1, 4, 8, 8), torch.tensor([2.0]), cond=conditioning, cond_scale=5.0)
    added = unet.calls[0]["added_cond_kwargs"]
    assert added["text_embeds"].shape == (2, 1280) and added["time_ids"][:, 0].tolist() == [1.0, 0.0]


def test_image_cond_is_concatenated_after_scaling(tiny_model):
    unet = FakeUNet()
    inner = CompVisDenoiser(replace(tiny_model, unet=unet))
    x = torch.ones(1, 4, 8, 8) * 2.0
    image_cond = torch.full((1, 5, 8, 8), 7.0)
    inner(x, torch.tensor([1.0]), torch.zeros(1, 77, 32), image_cond)
    seen = unet.calls[0]["x"]
    assert seen.shape == (1, 9, 8, 8)
    assert torch.allclose(seen[:, :4], x / 2**0.5) and torch.equal(seen[:, 4:], image_cond)


def test_token_padding_repeats_the_last_vector():
    short, long = torch.arange(6.0).reshape(3, 2), torch.zeros(5, 2)
    batch = CondBatch.stack([CondTensors(short), CondTensors(long)])
    assert batch.crossattn.shape == (2, 5, 2)
    assert torch.equal(batch.crossattn[0, 3:], short[-1:].repeat(2, 1))

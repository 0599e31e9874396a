"""ControlNet during sampling: residuals change the image, the guidance window follows the
extension's step fraction, units compose, control modes scale and mask as the extension."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from webui_api.controlnet.units import ControlUnit
from webui_api.engine.control import (
    ControlHook,
    PreparedUnit,
    pixel_perfect_resolution,
    prepare_controls,
    residual_scales,
    resize_map,
)
from webui_api.engine.pipeline import run_txt2img
from webui_api.progress import CancelToken

from ..engine.helpers import RecordingObserver, make_job
from .helpers import b64_png, pattern_image


def unit(model="tiny_canny", **fields) -> ControlUnit:
    image = np.asarray(pattern_image(64, 64, seed=fields.pop("image_seed", 0)))
    return ControlUnit(module=fields.pop("module", "none"), model=model, image=image, **fields)


def generate(engine, *units, steps=4, **job_fields):
    job = replace(make_job(seeds=(7,), steps=steps, **job_fields), controlnet_units=tuple(units))
    return engine.txt2img(job, RecordingObserver(), CancelToken())


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image.image) for image in result.images])


def traced(engine, *units, steps=4, sampler="Euler"):
    """Run the pipeline directly to read the per-call record."""
    model = engine.load()
    job = replace(make_job(seeds=(7,), steps=steps, sampler=sampler), controlnet_units=tuple(units))
    job, controls = prepare_controls(engine.controlnets, model, job, engine.annotator_dir)
    result = run_txt2img(model, job, RecordingObserver(), CancelToken())
    return controls.trace, result


def test_a_unit_changes_the_image_and_its_map_is_appended(cn_engine):
    plain = generate(cn_engine)
    controlled = generate(cn_engine, unit())
    assert not np.array_equal(pixels(plain), pixels(controlled))
    assert len(controlled.extra_images) == 1 and controlled.extra_images[0].size == (64, 64)
    assert np.array_equal(np.asarray(controlled.extra_images[0]), np.asarray(pattern_image(64, 64)))
    assert controlled.extra_generation_params["ControlNet 0"].startswith("Module: none, Model: tiny_canny [")


def test_detected_map_left_out_by_unit_or_option(cn_engine):
    assert generate(cn_engine, unit(save_detected_map=False)).extra_images == []
    assert generate(cn_engine, unit(), options={"control_net_no_detectmap": True}).extra_images == []


def test_weight_zero_disabled_or_closed_window_equals_no_unit_bit_for_bit(cn_engine):
    from webui_api.job_builder import build_txt2img
    from webui_api.schemas.generation import Txt2ImgRequest

    plain = pixels(generate(cn_engine))
    image = b64_png(pattern_image(64, 64))
    for sent in (
        {"image": image, "model": "tiny_canny", "weight": 0},
        {"image": image, "model": "tiny_canny", "enabled": False},
    ):
        request = Txt2ImgRequest(prompt="a cat", alwayson_scripts={"controlnet": {"args": [sent]}})
        assert build_txt2img(request, {}).controlnet_units == ()
    # a window that never opens: the fraction reaches only 3/4 with 4 steps
    never = generate(cn_engine, unit(guidance_start=1.0, guidance_end=1.0))
    assert np.array_equal(pixels(never), plain)


def test_guidance_window_uses_the_last_reported_step_over_the_step_count(cn_engine):
    late, _ = traced(cn_engine, unit(weight=0.7, guidance_start=0.5))
    # Euler, 4 steps: calls see sampling_step 0, 0, 1, 2 -> fractions 0, 0, .25, .5
    assert [(s.call, s.sampling_step) for s in late] == [(0, 0), (1, 0), (2, 1), (3, 2)]
    assert [s.strength for s in late] == [0.0, 0.0, 0.0, 0.7]
    early, _ = traced(cn_engine, unit(guidance_end=0.3))
    assert [s.strength for s in early] == [1.0, 1.0, 1.0, 0.0]


def test_second_order_samplers_call_twice_per_step(cn_engine):
    record, _ = traced(cn_engine, unit(guidance_start=0.5), sampler="Heun", steps=4)
    assert len(record) == 7  # Heun: two calls per step, one on the last
    assert [s.strength > 0 for s in record] == [s.sampling_step / 4 >= 0.5 for s in record]


def test_two_units_compose(cn_engine):
    first = pixels(generate(cn_engine, unit("tiny_canny")))
    second = pixels(generate(cn_engine, unit("tiny_depth", image_seed=3)))
    both = generate(cn_engine, unit("tiny_canny"), unit("tiny_depth", image_seed=3, index=1))
    assert not np.array_equal(pixels(both), first) and not np.array_equal(pixels(both), second)
    assert len(both.extra_images) == 2
    record, _ = traced(cn_engine, unit("tiny_canny"), unit("tiny_depth", index=1))
    assert [s.unit for s in record[:2]] == [0, 1]


def test_control_modes_change_the_image(cn_engine):
    balanced = pixels(generate(cn_engine, unit()))
    prompt = pixels(generate(cn_engine, unit(control_mode="My prompt is more important")))
    control = pixels(generate(cn_engine, unit(control_mode="ControlNet is more important")))
    assert not np.array_equal(balanced, prompt) and not np.array_equal(prompt, control)


def test_soft_injection_scales_and_hires_forcing():
    prepared = PreparedUnit(unit(control_mode="My prompt is more important"), None, torch.zeros(1))
    sd1 = residual_scales(prepared, 0.5, 13)
    assert sd1[-1] == 0.5 and sd1[0] == pytest.approx(0.5 * 0.825**12)
    assert residual_scales(prepared, 1.0, 10) == pytest.approx([0.825 ** (12 - i) for i in range(10)])
    balanced = PreparedUnit(unit(module="none"), None, torch.zeros(1))
    assert residual_scales(balanced, 0.8, 13) == [0.8] * 13
    canny_hires = PreparedUnit(replace(unit(), module="canny"), None, torch.zeros(1), hires_pass=True)
    assert residual_scales(canny_hires, 1.0, 13)[0] == pytest.approx(0.825**12)


def test_controlnet_more_important_reaches_only_the_prompt_rows(cn_engine):
    net = cn_engine.controlnets.get("tiny_canny", torch.device("cpu"), torch.float32)
    hint = torch.rand(1, 3, 64, 64)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 32)
    for mode, uncond_zero in (("Balanced", False), ("ControlNet is more important", True)):
        hook = ControlHook([PreparedUnit(unit(control_mode=mode), net, hint)], sampling_steps=4)
        extra = hook(x, t, context, uncond_rows=1)
        residuals = [*extra["down_block_additional_residuals"], extra["mid_block_additional_residual"]]
        assert len(residuals) == 7
        assert all(r[0].abs().sum() > 0 for r in residuals)
        assert all((r[1].abs().sum() == 0) == uncond_zero for r in residuals)


def test_resize_modes_and_pixel_perfect():
    wide = np.zeros((50, 100, 3), np.uint8)
    wide[:, :, 0] = np.arange(100, dtype=np.uint8)[None, :]
    wide[0, :] = 200  # top border: the median border colour stays 0 on the other channels
    assert resize_map(wide, "Just Resize", 64, 64).shape == (64, 64, 3)
    cropped = resize_map(wide, "Crop and Resize", 64, 64)
    assert cropped.shape == (64, 64, 3) and cropped[32, 0, 0] > 10  # the left edge was cut away
    filled = resize_map(wide, "Resize and Fill", 64, 64)
    assert filled.shape == (64, 64, 3) and (filled[:10, :, 1] == np.median(filled[:10, :, 1])).all()
    assert pixel_perfect_resolution(wide, 64, 64, "Crop and Resize") == 64
    assert pixel_perfect_resolution(wide, 64, 64, "Resize and Fill") == 32


def test_hires_fix_gets_a_map_at_each_size(cn_engine):
    from webui_api.job_builder import build_txt2img
    from webui_api.schemas.generation import Txt2ImgRequest

    request = Txt2ImgRequest(
        prompt="a cat",
        steps=2,
        width=64,
        height=64,
        seed=3,
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=2,
        denoising_strength=0.5,
        alwayson_scripts={"controlnet": {"args": [{"image": b64_png(pattern_image()), "model": "tiny_canny"}]}},
    )
    result = cn_engine.txt2img(build_txt2img(request, {}), RecordingObserver(), CancelToken())
    assert result.images[0].image.size == (96, 96)
    assert [m.size for m in result.extra_images] == [(96, 96), (64, 64)]


def test_unknown_model_fails_with_404_naming_the_models(cn_engine):
    from webui_api.errors import NotFound

    with pytest.raises(NotFound, match="tiny_canny"):
        generate(cn_engine, unit("openpose_xl"))

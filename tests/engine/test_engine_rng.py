"""A1111's noise: per-image seeds, variation seeds, seed resize, ENSD and the NV Philox source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui_api.engine.rng import ImageRNG, PhiloxGenerator, paste_window, slerp

SHAPE = (4, 8, 12)

# A1111 rng_philox check values: Generator(seed=0).randn((3, 4)) == CUDA torch.randn for seed 0.
NV_SEED0 = np.array(
    [
        [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
        [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
        [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("source", ["GPU", "CPU", "NV"])
def test_same_seed_same_noise(source):
    a = ImageRNG(SHAPE, [42], source=source)
    b = ImageRNG(SHAPE, [42], source=source)
    assert torch.equal(a.first(), b.first())
    assert torch.equal(a.next(), b.next())
    assert not torch.equal(ImageRNG(SHAPE, [43], source=source).first(), ImageRNG(SHAPE, [42], source=source).first())


def test_cpu_source_is_torch_randn_of_the_seed():
    noise = ImageRNG(SHAPE, [7], source="CPU").first()
    expected = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    assert noise.shape == (1, *SHAPE) and noise.dtype == torch.float32
    assert torch.equal(noise[0], expected)


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_batch_invariance(source):
    batch = ImageRNG(SHAPE, [10, 11, 12], subseeds=[5, 6, 7], subseed_strength=0.4, source=source)
    alone = ImageRNG(SHAPE, [11], subseeds=[6], subseed_strength=0.4, source=source)
    assert torch.equal(batch.first()[1], alone.first()[0])
    assert torch.equal(batch.next()[1], alone.next()[0])


def test_subseed_strength_zero_is_plain_noise():
    plain = ImageRNG(SHAPE, [3]).first()
    varied = ImageRNG(SHAPE, [3], subseeds=[99], subseed_strength=0.0).first()
    assert torch.equal(plain, varied)


def test_subseed_strength_mixes_toward_the_subseed():
    seed_noise = ImageRNG(SHAPE, [3]).first()
    sub_noise = ImageRNG(SHAPE, [99]).first()
    mixed = ImageRNG(SHAPE, [3], subseeds=[99], subseed_strength=0.5).first()
    full = ImageRNG(SHAPE, [3], subseeds=[99], subseed_strength=1.0).first()
    assert not torch.allclose(mixed, seed_noise) and not torch.allclose(mixed, sub_noise)
    assert torch.allclose(full, sub_noise, atol=1e-5)


def test_slerp_near_parallel_fallback_swaps_weights():
    low = torch.randn(4, 8, 8)
    assert torch.allclose(slerp(0.25, low, low.clone()), low)  # both branches agree on equal inputs
    assert torch.allclose(slerp(0.25, low, low * 1.0001), 0.25 * low + 0.75 * low * 1.0001)


def test_nv_philox_check_values():
    values = PhiloxGenerator(0).randn_numpy((3, 4))
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, NV_SEED0, atol=1e-6)


def test_nv_offset_advances_per_call():
    gen = PhiloxGenerator(0)
    first, second = gen.randn_numpy((3, 4)), gen.randn_numpy((3, 4))
    assert gen.offset == 2
    assert not np.array_equal(first, second)


def test_ensd_changes_step_noise_not_initial_noise():
    plain, delta = ImageRNG(SHAPE, [5, 6]), ImageRNG(SHAPE, [5, 6], ensd=31337)
    assert torch.equal(plain.first(), delta.first())
    step_plain, step_delta = plain.next(), delta.next()
    assert not torch.equal(step_plain, step_delta)
    restarted = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6 + 31337))
    assert torch.equal(step_delta[1], restarted)


def test_step_noise_continues_the_seed_stream_without_ensd():
    rng = ImageRNG(SHAPE, [5])
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(rng.first()[0], torch.randn(SHAPE, generator=gen))
    assert torch.equal(rng.next()[0], torch.randn(SHAPE, generator=gen))


def test_next_before_first_returns_the_initial_noise():
    assert torch.equal(ImageRNG(SHAPE, [8]).next(), ImageRNG(SHAPE, [8]).first())


def test_seed_resize_to_the_same_size_is_plain_noise():
    plain = ImageRNG(SHAPE, [9]).first()
    same = ImageRNG(SHAPE, [9], seed_resize_from_h=SHAPE[1] * 8, seed_resize_from_w=SHAPE[2] * 8).first()
    assert torch.equal(plain, same)


def test_seed_resize_pastes_the_small_noise_centred():
    small = ImageRNG((4, 4, 6), [9]).first()[0]  # what a 32x48 image of seed 9 would get
    resized = ImageRNG(SHAPE, [9], seed_resize_from_h=32, seed_resize_from_w=48).first()[0]
    assert torch.equal(resized[:, 2:6, 3:9], small)
    full = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    assert torch.equal(resized[:, 0, :], full[:, 0, :])  # outside the window: the full-size draw


def test_seed_resize_from_larger_crops_the_centre():
    big = ImageRNG((4, 12, 16), [9]).first()[0]
    resized = ImageRNG(SHAPE, [9], seed_resize_from_h=96, seed_resize_from_w=128).first()[0]
    assert torch.equal(resized, big[:, 2:10, 2:14])


def test_paste_window_arithmetic():
    win = paste_window((8, 12), (5, 15))
    assert (win.dst_y, win.src_y, win.h) == (1, 0, 5)
    assert (win.dst_x, win.src_x, win.w) == (0, 2, 11)


def test_global_rng_untouched():
    before = torch.get_rng_state()
    rng = ImageRNG(SHAPE, [1, 2], subseeds=[3, 4], subseed_strength=0.5, seed_resize_from_h=32, seed_resize_from_w=32)
    rng.first()
    rng.next()
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize(
    "kwargs",
    [{"shape": (4, 8)}, {"seeds": []}, {"source": "TPU"}],
)
def test_bad_arguments_are_rejected(kwargs):
    args = {"shape": SHAPE, "seeds": [1], **kwargs}
    with pytest.raises(ValueError):
        ImageRNG(args.pop("shape"), args.pop("seeds"), **args)

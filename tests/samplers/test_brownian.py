"""Brownian-tree noise for the SDE samplers: A1111's seeding, per-image independence, interval."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchsde")

from samplers.brownian import BrownianTreeNoise, schedule_interval  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")
SHAPE = (4, 8, 8)


def test_torchsde_node_normals_equal_a1111s_cpu_draw():
    """A1111 replaces torchsde's per-node draw with randn_local(seed, size): a fresh CPU generator
    seeded with the node seed. torchsde's own draw for a CPU float32 tree is that same call, so
    no replacement is needed for the CPU source (read-only check of torchsde's helper)."""
    from torchsde._brownian import brownian_interval

    for seed in (0, 1234, 2**40 + 7):
        ours = brownian_interval._randn(SHAPE, torch.float32, torch.device("cpu"), seed)
        a1111 = torch.randn(SHAPE, device="cpu", generator=torch.Generator("cpu").manual_seed(seed))
        assert torch.equal(ours, a1111)


def test_each_image_gets_the_same_noise_whatever_its_batch():
    lo, hi = torch.tensor(0.0292), torch.tensor(14.6146)
    pair = BrownianTreeNoise(SHAPE, lo, hi, [5, 6])
    alone = BrownianTreeNoise(SHAPE, lo, hi, [6])
    a, b = torch.tensor(7.5), torch.tensor(3.25)
    assert torch.equal(pair(a, b)[1], alone(a, b)[0])
    assert not torch.equal(pair(a, b)[0], pair(a, b)[1])


def test_noise_is_unit_variance_and_antisymmetric():
    noise = BrownianTreeNoise((64, 64), torch.tensor(0.03), torch.tensor(14.6), [1, 2, 3])
    a, b = torch.tensor(2.0), torch.tensor(1.5)
    forward = noise(a, b)
    assert forward.shape == (3, 64, 64)
    assert float(forward.std()) == pytest.approx(1.0, abs=0.05)
    assert torch.allclose(noise(b, a), -forward)
    assert torch.equal(noise(a, b), forward)  # a query is a pure function of the interval


def test_unbatched_tree_takes_one_seed_over_the_whole_batch():
    noise = BrownianTreeNoise((2,) + SHAPE, torch.tensor(0.03), torch.tensor(14.6), [9], batched=False)
    assert noise(torch.tensor(3.0), torch.tensor(2.0)).shape == (2,) + SHAPE
    with pytest.raises(ValueError, match="exactly one seed"):
        BrownianTreeNoise(SHAPE, 0.03, 14.6, [1, 2], batched=False)
    with pytest.raises(ValueError, match="at least one seed"):
        BrownianTreeNoise(SHAPE, 0.03, 14.6, [])


def test_interval_is_smallest_positive_and_largest_sigma():
    low, high = schedule_interval(torch.tensor([14.6, 3.0, 0.5, 0.0292, 0.0]))
    assert float(low) == pytest.approx(0.0292) and float(high) == pytest.approx(14.6)
    with pytest.raises(ValueError, match="no positive sigma"):
        schedule_interval(torch.zeros(3))

"""The pluggable-draw Brownian tree: torchsde's numbers with torchsde's draw, and the
increment arithmetic with any other draw."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
import torchsde

from samplers.brownian import BrownianTreeNoise
from samplers.brownian_tree import SeededBrownianTree, torch_normal

T0, T1 = 0.0291675, 14.614642
SHAPE = (4, 8, 8)


def _queries():
    """Sampler-like queries: each step interval and both of its halves (as DPM++ SDE asks)."""
    sigmas = torch.linspace(T1, T0, 9).tolist()
    for a, b in pairwise(sigmas):
        yield from ((b, a), (b, (a + b) / 2), ((a + b) / 2, a))


@pytest.mark.parametrize("seed", [0, 12345, 2**31 + 7])
def test_with_torchsdes_draw_it_is_torchsdes_brownian_tree(seed):
    reference = torchsde.BrownianTree(torch.tensor(T0), torch.zeros(SHAPE), torch.tensor(T1), entropy=seed)
    tree = SeededBrownianTree(T0, T1, SHAPE, seed, torch_normal("cpu"))
    for lo, hi in _queries():
        assert torch.equal(tree(lo, hi), reference(lo, hi)), (lo, hi)
    assert torch.equal(tree(1.0, 1.0), torch.zeros(SHAPE))


def _counting_draw(calls):
    """A deterministic draw: a seed's value is 1 + the order in which seeds were first seen."""

    def draw(seed, shape):
        if int(seed) not in calls:
            calls.append(int(seed))
        return torch.full(tuple(shape), float(calls.index(int(seed)) + 1))

    return draw


def test_other_draws_follow_the_seed_sequence_and_bridge_formula():
    calls = []
    tree = SeededBrownianTree(0.0, 2.0, (2,), 7, _counting_draw(calls))
    top_seed = int(np.random.SeedSequence(entropy=7, pool_size=24).generate_state(3)[0])
    assert calls == [top_seed]
    whole = tree(0.0, 2.0)
    assert torch.allclose(whole, torch.full((2,), math.sqrt(2.0)))  # first draw (1.0) * sqrt(t1 - t0)
    left = tree(0.0, 1.0)
    node_seed = int(np.random.SeedSequence(entropy=7, spawn_key=(0, 0), pool_size=24).generate_state(4)[0])
    assert calls[1] == node_seed
    # bridge at the midpoint: mean (1/2) W, variance 1 * 1 / 2, second draw = 2.0
    assert torch.allclose(left, 0.5 * whole + math.sqrt(0.5) * 2.0)
    assert torch.allclose(tree(1.0, 2.0), whole - left)
    assert torch.allclose(tree(0.0, 2.0), whole)


def test_noise_sampler_uses_the_given_draw_and_scales_to_unit_variance():
    calls = []
    noise = BrownianTreeNoise((2,), 0.5, 4.5, [3, 4], normal=_counting_draw(calls))
    out = noise(torch.tensor(4.5), torch.tensor(0.5))  # the whole interval, walked downwards
    assert out.shape == (2, 2)
    assert torch.allclose(out, torch.tensor([[-1.0, -1.0], [-2.0, -2.0]]))  # draws 1, 2; sign of a descent

"""Brownian-tree noise under the NV RNG source: A1111 draws the tree's node normals with its
Philox port, seeded with torchsde's node seeds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from tests.engine.helpers import make_job
from webui_api.engine.pipeline import make_noise_sampler
from webui_api.engine.rng import PhiloxGenerator, randn_seeded

SCHEDULE = torch.tensor([14.6146, 7.0, 2.0, 0.5, 0.0292, 0.0])


def _noise(source: str, seeds=(5, 6)):
    model = SimpleNamespace(latent_channels=4, device=torch.device("cpu"))
    plan = SimpleNamespace(sampler=SimpleNamespace(brownian_noise=True))
    job = make_job(seeds=seeds, batch_size=len(seeds), randn_source=source)
    return make_noise_sampler(model, job, plan, SimpleNamespace(seeds=seeds), None, SCHEDULE)


def _top_seed(entropy: int) -> int:
    return int(np.random.SeedSequence(entropy=entropy, pool_size=24).generate_state(3)[0])


def test_nv_tree_nodes_are_philox_draws_of_the_node_seeds():
    noise = _noise("NV")
    whole = noise(SCHEDULE[0], SCHEDULE[-2])  # the full tree interval, walked downwards
    expected = torch.stack([PhiloxGenerator(_top_seed(seed)).randn((4, 8, 8)) for seed in (5, 6)])
    assert torch.allclose(whole, -expected, atol=1e-6)


def test_cpu_and_nv_trees_differ_only_in_the_draw():
    cpu, nv = _noise("CPU"), _noise("NV")
    cpu_whole = cpu(SCHEDULE[0], SCHEDULE[-2])
    expected = torch.stack([randn_seeded(_top_seed(seed), (4, 8, 8), "CPU", torch.device("cpu")) for seed in (5, 6)])
    assert torch.allclose(cpu_whole, -expected, atol=1e-6)
    step = nv(SCHEDULE[1], SCHEDULE[2])
    assert step.shape == (2, 4, 8, 8) and not torch.allclose(step, cpu(SCHEDULE[1], SCHEDULE[2]))
    assert torch.equal(step, _noise("NV")(SCHEDULE[1], SCHEDULE[2]))  # a function of seed and interval

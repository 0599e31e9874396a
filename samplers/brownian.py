"""Brownian-tree noise for the SDE samplers (DPM++ SDE, 2M SDE, 2M SDE Heun, 3M SDE).

A1111 gives these samplers k-diffusion's Brownian-tree noise sampler: one
``torchsde.BrownianTree`` per image, seeded with that image's main seed, spanning
(smallest positive sigma of the full schedule, largest sigma). Querying the tree between two
sigmas gives the Brownian increment, which is divided by sqrt(|t1 - t0|) to be unit-variance.
Because the noise is a function of (seed, sigma interval) rather than of a stream position,
an image gets the same noise whatever batch it is in and whatever step count it is sampled
with nearby.

torchsde draws each tree node's normals from a fresh ``torch.Generator(device)`` seeded per
node; A1111 replaces that draw with its own seeded draw on the RNG-source device, which for a
CPU generator and float32 is the very same call. So trees built on the CPU reproduce A1111's
"CPU" source exactly, and trees built on the model's device reproduce its "GPU" source. For
the "NV" source A1111 draws the node normals with its Philox port; the caller then passes that
draw as ``normal`` and the trees are ``brownian_tree.SeededBrownianTree`` (torchsde's
algorithm with the draw plugged in, since torchsde has no such hook).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from samplers.brownian_tree import NormalDraw, SeededBrownianTree


def _sorted(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    return (a, b, 1) if a < b else (b, a, -1)


class BrownianTreeNoise:
    """noise_sampler(sigma, sigma_next) -> (B, *shape) unit-variance Brownian increments.

    ``shape`` is one image's latent shape; ``seeds`` has one seed per batch row. Trees live on
    ``tree_device`` (their node normals come from a generator there); results are moved to
    ``device``. ``batched=False`` builds a single tree over the whole batch tensor, as
    k-diffusion does when given one seed instead of a list. ``normal`` replaces torchsde's
    per-node draw (seed, shape) -> normals (A1111's "NV" source); the trees then run on the CPU.
    """

    def __init__(
        self,
        shape: Sequence[int],
        sigma_min: torch.Tensor | float,
        sigma_max: torch.Tensor | float,
        seeds: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        tree_device: torch.device | str | None = None,
        batched: bool = True,
        normal: NormalDraw | None = None,
    ) -> None:
        import torchsde

        if not seeds:
            raise ValueError("BrownianTreeNoise needs at least one seed")
        if not batched and len(seeds) != 1:
            raise ValueError(f"an unbatched Brownian tree takes exactly one seed, got {len(seeds)}")
        self.device = torch.device(device)
        self.batched = batched
        tree_device = self.device if tree_device is None else torch.device(tree_device)
        t0, t1 = torch.as_tensor(sigma_min).cpu(), torch.as_tensor(sigma_max).cpu()
        t0, t1, self.sign = _sorted(t0, t1)
        if normal is not None:
            self.trees = [SeededBrownianTree(float(t0), float(t1), tuple(shape), int(seed), normal) for seed in seeds]
            return
        w0 = torch.zeros(tuple(shape), dtype=torch.float32, device=tree_device)
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(seed)) for seed in seeds]

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma).cpu(), torch.as_tensor(sigma_next).cpu()
        lo, hi, sign = _sorted(t0, t1)
        w = torch.stack([tree(lo, hi) for tree in self.trees]) * (self.sign * sign)
        w = w if self.batched else w[0]
        return (w / (t1 - t0).abs().sqrt()).to(self.device)


def schedule_interval(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111's tree interval: the smallest positive and the largest sigma of the FULL schedule
    (also for img2img, which walks only its tail)."""
    positive = sigmas[sigmas > 0]
    if positive.numel() == 0:
        raise ValueError(f"the schedule has no positive sigma to span a Brownian tree: {sigmas.tolist()}")
    return positive.min(), sigmas.max()

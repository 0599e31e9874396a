"""A Brownian tree whose node normals come from a caller-supplied draw.

This follows torchsde 0.2.6's ``BrownianTree`` (a halfway-split Brownian interval without
Lévy area) step for step: the same node seeds (numpy ``SeedSequence`` keyed by the tree's
entropy and each node's spawn key and depth), the same rounding of times to the tolerance's
decimal digits, the same midpoint splits and the same Brownian-bridge arithmetic. With
``normal`` drawing as torchsde does (a fresh ``torch.Generator`` seeded per node) it gives the
very same numbers; its reason to exist is that A1111 replaces that per-node draw with its
own seeded draw on the RNG source, and for the "NV" source that draw is its Philox port,
which torchsde offers no way to plug in.

Node increments are recomputed from the nearest cached ancestor when needed, so the cache
size only changes speed, never values.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

NormalDraw = Callable[[int, Sequence[int]], torch.Tensor]  # (seed, shape) -> float32 normals
POOL_SIZE = 24  # torchsde's defaults for BrownianTree
TOLERANCE = 1e-6
CACHE_SIZE = 45


def torch_normal(device: torch.device | str) -> NormalDraw:
    """torchsde's own draw: a fresh generator on `device` seeded with the node seed."""

    def draw(seed: int, shape: Sequence[int]) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(int(seed))
        return torch.randn(tuple(shape), dtype=torch.float32, device=device, generator=generator)

    return draw


@dataclass(eq=False)
class _Node:
    """One sub-interval of [t0, t1]; split nodes also hold their children and bridge seed."""

    start: float
    end: float
    parent: _Node | None = None
    is_left: bool = False
    midway: float | None = None
    w_seed: int = 0
    spawn_key: int = 0
    depth: int = 0
    left: _Node | None = None
    right: _Node | None = None


def _halves(node: _Node) -> tuple[float, _Node, _Node]:
    """A halved node's midpoint and children; only halved nodes are descended into."""
    if node.midway is None or node.left is None or node.right is None:
        raise RuntimeError(f"Brownian tree node [{node.start}, {node.end}] is not halved")
    return node.midway, node.left, node.right


@dataclass(eq=False)
class SeededBrownianTree:
    """tree(ta, tb) -> the Brownian increment over [ta, tb] (t0 <= ta <= tb <= t1)."""

    t0: float
    t1: float
    shape: tuple[int, ...]
    entropy: int
    normal: NormalDraw
    digits: int = field(init=False)
    top: _Node = field(init=False)
    top_w: torch.Tensor = field(init=False)
    cache: OrderedDict[_Node, torch.Tensor] = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.t0, self.t1 = float(self.t0), float(self.t1)
        if self.t0 > self.t1:
            raise ValueError(f"a Brownian tree needs t0 <= t1, got t0={self.t0}, t1={self.t1}")
        self.digits = -int(math.log10(TOLERANCE))
        self.top = _Node(self._round(self.t0), self._round(self.t1))
        top_seed = np.random.SeedSequence(entropy=self.entropy, pool_size=POOL_SIZE).generate_state(3)[0]
        self.top_w = self.normal(int(top_seed), self.shape) * math.sqrt(self.t1 - self.t0)

    def _round(self, t: float) -> float:
        return round(t, self.digits)

    def __call__(self, ta: float | torch.Tensor, tb: float | torch.Tensor) -> torch.Tensor:
        ta, tb = self._clamp(float(ta)), self._clamp(float(tb))
        if ta > tb:
            raise ValueError(f"query times must satisfy ta <= tb, got ta={ta}, tb={tb}")
        if ta == tb:
            return torch.zeros_like(self.top_w)
        pieces: list[_Node] = []
        self._locate(self.top, self._round(ta), self._round(tb), pieces)
        total = self._increment(pieces[0])
        for node in pieces[1:]:
            total = total + self._increment(node)
        return total

    def _clamp(self, t: float) -> float:
        if t < self.top.start or t > self.top.end:
            where = f"[{self.top.start}, {self.top.end}]"
            warnings.warn(f"Brownian tree query at {t} outside {where}; clamped", stacklevel=3)
        return min(max(t, self.top.start), self.top.end)

    # -- where a query lands -------------------------------------------------------------

    def _locate(self, node: _Node, ta: float, tb: float, out: list[_Node]) -> None:
        """Append the nodes that exactly tile [ta, tb] (rounded), splitting as needed."""
        if ta == node.start and tb == node.end:
            out.append(node)
            return
        if node.midway is None:
            self._split(node, tb if ta == node.start else ta)
        midway, left, right = _halves(node)
        if tb <= midway:
            self._locate(left, ta, tb, out)
        elif ta >= midway:
            self._locate(right, ta, tb, out)
        else:
            self._locate(left, ta, midway, out)
            self._locate(right, midway, tb, out)

    def _split(self, node: _Node, point: float) -> None:
        """Halve `node`, then keep halving the half holding `point` until it is a midpoint."""
        while True:
            if node.midway is None:
                self._halve(node)
            midway, left, right = _halves(node)
            if point == midway:
                return
            node = right if point > midway else left

    def _halve(self, node: _Node) -> None:
        middle = 0.5 * (node.end + node.start)
        node.midway = self._round(middle)
        if node.parent is not None:
            node.spawn_key = 2 * node.parent.spawn_key + (0 if node.is_left else 1)
            node.depth = node.parent.depth + 1
        sequence = np.random.SeedSequence(
            entropy=self.entropy, spawn_key=(node.spawn_key, node.depth), pool_size=POOL_SIZE
        )
        node.w_seed = int(sequence.generate_state(4)[0])
        node.left = _Node(self._round(node.start), self._round(middle), node, True)
        node.right = _Node(self._round(middle), self._round(node.end), node, False)

    # -- increments ----------------------------------------------------------------------

    def _increment(self, node: _Node) -> torch.Tensor:
        """W over the node: the top's draw, else a Brownian bridge inside the parent's W."""
        if node.parent is None:
            return self.top_w
        if node in self.cache:
            return self.cache[node]
        parent = node.parent
        w = self._increment(parent)
        h_reciprocal = 1 / (parent.end - parent.start)
        midway = _halves(parent)[0]
        left_diff = midway - parent.start
        right_diff = parent.end - midway
        mean = left_diff * w * h_reciprocal
        var = left_diff * right_diff * h_reciprocal
        left_w = mean + math.sqrt(var) * self.normal(parent.w_seed, self.shape)
        out = left_w if node.is_left else w - left_w
        self._remember(node, out)
        return out

    def _remember(self, node: _Node, value: torch.Tensor) -> None:
        self.cache[node] = value
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)

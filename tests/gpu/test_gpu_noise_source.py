"""randn_source "GPU": A1111 seeds the global RNG (torch.manual_seed) and draws with
torch.randn(shape, device=<model device>). Our draw must ask for a torch.Generator on that same
CUDA device seeded with the same seed; without a GPU we check the request, and the equivalence
of a seeded generator with the seeded global RNG on the CPU (the suite checks CUDA bit for bit)."""

from __future__ import annotations

import pytest
import torch

from webui_api.engine import rng


class RecordingGenerator:
    made: list[RecordingGenerator] = []

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.seed: int | None = None
        RecordingGenerator.made.append(self)

    def manual_seed(self, seed: int) -> RecordingGenerator:
        self.seed = seed
        return self


@pytest.fixture()
def recording(monkeypatch: pytest.MonkeyPatch) -> list[RecordingGenerator]:
    RecordingGenerator.made = []
    monkeypatch.setattr(rng.torch, "Generator", RecordingGenerator)
    return RecordingGenerator.made


def test_gpu_source_asks_for_a_generator_on_the_models_cuda_device(recording: list[RecordingGenerator]) -> None:
    made = rng.create_generator(1234, "GPU", torch.device("cuda", 1))
    assert [(g.device, g.seed) for g in recording] == [(torch.device("cuda", 1), 1234)]
    assert isinstance(made, rng.TorchNoiseGenerator) and made.target == torch.device("cuda", 1)


def test_cpu_source_draws_on_the_cpu_for_a_cuda_model(recording: list[RecordingGenerator]) -> None:
    made = rng.create_generator(7, "CPU", torch.device("cuda"))
    assert [(g.device, g.seed) for g in recording] == [(torch.device("cpu"), 7)]
    assert made.target == torch.device("cuda")


def test_seeds_are_taken_as_python_ints(recording: list[RecordingGenerator]) -> None:
    rng.create_generator(2**32 - 1, "GPU", torch.device("cuda"))
    assert recording[0].seed == 2**32 - 1 and type(recording[0].seed) is int


def test_a_seeded_generator_draws_what_the_seeded_global_rng_draws() -> None:
    """A1111's manual_seed + randn, against our per-seed generator (same device kind)."""
    state = torch.get_rng_state()
    try:
        torch.manual_seed(99)
        a1111 = torch.randn((4, 8, 8))
    finally:
        torch.set_rng_state(state)
    ours = rng.randn_seeded(99, (4, 8, 8), "GPU", torch.device("cpu"))
    assert torch.equal(a1111, ours)

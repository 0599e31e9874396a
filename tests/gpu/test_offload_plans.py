"""--medvram / --medvram-sdxl / --lowvram as offload plans: which modules live where, when."""

from __future__ import annotations

import pytest
import torch

from webui_api.engine.models import build_embedded_model
from webui_api.engine.offload import CPU, ModuleSwapper, OffloadPlan

DEVICE = torch.device("cpu", 1)  # a second "device" label: moves are recorded, never performed


@pytest.mark.parametrize(
    ("mode", "family", "granularity"),
    [
        ("normal", "sd1", "none"),
        ("medvram", "sd1", "model"),
        ("medvram", "sdxl", "model"),
        ("medvram-sdxl", "sd1", "none"),
        ("medvram-sdxl", "sdxl", "model"),
        ("medvram-sdxl", "sdxl-refiner", "model"),
        ("lowvram", "sd1", "block"),
        ("lowvram", "sdxl", "block"),
    ],
)
def test_plan_per_flag(mode: str, family: str, granularity: str) -> None:
    assert OffloadPlan.for_mode(mode, family).granularity == granularity


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        OffloadPlan.for_mode("tinyvram", "sd1")


def test_medvram_units_are_whole_networks_in_use_order() -> None:
    model = build_embedded_model()
    names = [name for name, _ in OffloadPlan("model").swap_units(model.modules())]
    assert names == ["text_encoder", "unet", "vae.encoder", "vae.decoder"]


def test_every_text_encoder_is_a_unit_sd3_t5_included() -> None:
    model = build_embedded_model()
    parts = {**model.modules(), "text_encoder_2": torch.nn.Linear(1, 1), "text_encoder_3": torch.nn.Linear(1, 1)}
    names = [name for name, _ in OffloadPlan("model").swap_units(parts)]
    assert names[:3] == ["text_encoder", "text_encoder_2", "text_encoder_3"]


def test_lowvram_splits_the_unet_into_blocks() -> None:
    model = build_embedded_model()
    names = [name for name, _ in OffloadPlan("block").swap_units(model.modules())]
    blocks = len(model.unet.down_blocks)
    assert names[0] == "text_encoder" and names[1] == "unet.time_embedding"
    assert names[2 : 2 + blocks] == [f"unet.down_blocks.{i}" for i in range(blocks)]
    assert "unet.mid_block" in names and names[-2:] == ["vae.encoder", "vae.decoder"]
    assert "unet" not in names


class RecordingMover:
    """Remembers where every module was sent, without moving anything."""

    def __init__(self) -> None:
        self.where: dict[int, torch.device] = {}
        self.moves: list[tuple[int, torch.device]] = []

    def __call__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.where[id(module)] = device
        self.moves.append((id(module), device))


@pytest.mark.parametrize("granularity", ["model", "block"])
def test_one_unit_on_the_device_at_a_time_through_a_real_forward(granularity: str) -> None:
    model = build_embedded_model()
    mover = RecordingMover()
    swapper = ModuleSwapper(DEVICE, mover)
    plan = OffloadPlan(granularity)
    units = dict(plan.swap_units(model.modules()))
    swapper.install(model.modules(), plan)
    assert all(mover.where[id(m)] == CPU for m in units.values())  # parked after install
    if granularity == "block":
        assert mover.where[id(model.unet.conv_in)] == DEVICE  # the rest of the UNet stays on the device

    residents: list[str] = []
    for name in units:
        hook_target = units[name]
        hook_target.register_forward_pre_hook(lambda *_: residents.append(swapper.resident or ""))
    tokens = torch.zeros(1, 77, dtype=torch.long)
    context = model.text_encoder(tokens)[0]
    model.unet(torch.zeros(1, 4, 8, 8), torch.tensor([1]), encoder_hidden_states=context)
    model.vae.decode(torch.zeros(1, 4, 8, 8))

    on_device = [name for name, m in units.items() if mover.where[id(m)] == DEVICE]
    assert on_device == ["vae.decoder"] == [swapper.resident]
    expected_order = [n for n in units if n != "vae.encoder"]
    assert [n for i, n in enumerate(residents) if i == 0 or residents[i - 1] != n] == expected_order


def test_remove_sends_the_resident_back_and_drops_hooks() -> None:
    model = build_embedded_model()
    mover = RecordingMover()
    swapper = ModuleSwapper(DEVICE, mover)
    swapper.install(model.modules(), OffloadPlan("model"))
    swapper.activate("unet")
    swapper.remove()
    assert mover.where[id(model.unet)] == CPU and swapper.resident is None
    before = len(mover.moves)
    model.text_encoder(torch.zeros(1, 77, dtype=torch.long))
    assert len(mover.moves) == before  # no hook left


def test_no_plan_installs_nothing() -> None:
    model = build_embedded_model()
    mover = RecordingMover()
    ModuleSwapper(DEVICE, mover).install(model.modules(), OffloadPlan("none"))
    assert all(device == DEVICE for _, device in mover.moves)


def test_engine_offloads_only_off_the_cpu_and_per_family() -> None:
    from webui_api.engine.facade import Engine

    model = build_embedded_model()
    assert not Engine(device="cpu", vram_mode="lowvram").models.offload_plan(model).offloads
    gpu_engine = Engine(device="cuda", dtype="float32", vram_mode="medvram-sdxl")  # built, never run
    assert not gpu_engine.models.offload_plan(model).offloads  # the embedded model is SD1
    model.family = "sdxl"
    assert gpu_engine.models.offload_plan(model).granularity == "model"


def test_engine_refuses_an_unknown_vram_mode() -> None:
    from webui_api.engine.facade import Engine

    with pytest.raises(ValueError):
        Engine(device="cpu", vram_mode="novram")

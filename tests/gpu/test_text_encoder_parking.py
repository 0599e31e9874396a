"""--offload-text-encoders: the parking decision as a table, and its application with a fake
memory probe and a recording mover (the engine's device type is "cuda" in the decision only)."""

from __future__ import annotations

import pytest
import torch

from webui_api.engine.models import build_embedded_model
from webui_api.engine.text_encoder_offload import (
    ParkDecision,
    TextEncoderParking,
    check_offload_mode,
    decide_parking,
    module_bytes,
)

GIB = 1024**3
META = torch.device("meta")


@pytest.mark.parametrize(
    ("device_type", "free", "pending", "mode", "by_plan", "expected"),
    [
        ("cpu", 0, 0, "always", False, ParkDecision.KEEP),  # never on a CPU device
        ("cpu", 0, 0, "auto", False, ParkDecision.KEEP),
        ("cuda", 0, 0, "always", True, ParkDecision.BY_PLAN),  # --medvram/--lowvram swap them already
        ("cuda", 100 * GIB, 0, "auto", True, ParkDecision.BY_PLAN),
        ("cuda", 100 * GIB, 0, "always", False, ParkDecision.PARK),
        ("cuda", 0, 0, "never", False, ParkDecision.KEEP),
        ("cuda", 2 * GIB, 0, "auto", False, ParkDecision.PARK),  # below the 3 GiB margin
        ("cuda", 4 * GIB, 0, "auto", False, ParkDecision.KEEP),
        ("cuda", 4 * GIB, 2 * GIB, "auto", False, ParkDecision.PARK),  # transformer/VAE still to come
        ("cuda", 5 * GIB, 2 * GIB, "auto", False, ParkDecision.KEEP),  # exactly enough: kept
        ("mps", 1 * GIB, 0, "auto", False, ParkDecision.PARK),
    ],
)
def test_decision_table(device_type, free, pending, mode, by_plan, expected) -> None:
    decision = decide_parking(device_type, free, 10 * GIB, pending, 3 * GIB, mode, offloaded_by_plan=by_plan)
    assert decision is expected


def test_nothing_to_park_is_kept_and_unknown_modes_are_refused() -> None:
    assert decide_parking("cuda", 0, 0, 0, GIB, "always") is ParkDecision.KEEP
    with pytest.raises(ValueError, match="auto, always, never"):
        check_offload_mode("sometimes")
    with pytest.raises(ValueError):
        TextEncoderParking("cuda", "sometimes")


class RecordingMover:
    """Records (module, device) and moves for real (to "meta", then back from a stash of its state)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self._stash: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, module: torch.nn.Module, device: torch.device) -> None:
        target = torch.device(device)
        self.calls.append((id(module), target.type))
        if target.type == "meta":
            self._stash[id(module)] = {name: t.clone() for name, t in _tensors(module)}
            module.to(META)
        else:
            module.to_empty(device=target)
            stash = self._stash.pop(id(module))
            with torch.no_grad():
                for name, tensor in _tensors(module):
                    tensor.copy_(stash[name])


def _tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer, non-persistent buffers (CLIP's position ids) included."""
    return [*module.named_parameters(), *module.named_buffers()]


def test_auto_reads_the_probe_after_encoding_and_brings_encoders_back() -> None:
    model = build_embedded_model()
    encoder = model.text_encoder
    probed: list[torch.device] = []

    def probe(device: torch.device) -> int:
        probed.append(device)
        return GIB  # below the default 3 GiB margin

    mover = RecordingMover()
    parking = TextEncoderParking("cuda", "auto", mover, probe, parking=META)
    assert parking.after_encode(model) is ParkDecision.PARK
    assert probed == [model.device]
    assert next(encoder.parameters()).device.type == "meta"
    parking.before_encode(model)
    parking.before_encode(model)  # already back: no second move
    assert mover.calls == [(id(encoder), "meta"), (id(encoder), "cpu")]
    assert next(encoder.parameters()).device.type == "cpu"

    roomy = TextEncoderParking("cuda", "auto", mover, lambda _device: 40 * GIB, parking=META)
    assert roomy.after_encode(model) is ParkDecision.KEEP
    assert len(mover.calls) == 2


def test_swapper_owned_encoders_are_left_alone() -> None:
    model = build_embedded_model()
    model.offloaded = True
    mover = RecordingMover()
    parking = TextEncoderParking("cuda", "always", mover, parking=META)
    assert parking.after_encode(model) is ParkDecision.BY_PLAN
    parking.before_encode(model)
    assert mover.calls == []
    assert module_bytes(model.text_encoder) > 0


def test_every_encoder_parks_sd3_t5_included_and_the_transformer_stays() -> None:
    model = build_embedded_model()
    model.text_encoder_2, model.text_encoder_3 = torch.nn.Linear(2, 2), torch.nn.Linear(3, 3)
    mover = RecordingMover()
    TextEncoderParking("cuda", "always", mover, parking=META).after_encode(model)
    encoders = (model.text_encoder, model.text_encoder_2, model.text_encoder_3)
    assert mover.calls == [(id(m), "meta") for m in encoders]
    assert next(model.unet.parameters()).device.type == "cpu"

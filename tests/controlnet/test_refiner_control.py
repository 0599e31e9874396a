"""ControlNet with a refiner: the units act on the base model's UNet calls only. A ControlNet
matches the base architecture (an SDXL ControlNet's residual widths do not fit the SDXL
refiner's UNet), and the extension's hook sits on the base model, so after the switch the
refiner samples without control, while the switch itself happens as without units."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from tests.engine.helpers import RecordingObserver, make_job
from webui_api.engine.control import prepare_controls
from webui_api.engine.models import CheckpointInfo, build_embedded_model
from webui_api.engine.refiner import CompanionModels, run_txt2img_refined
from webui_api.jobs import RefinerParams
from webui_api.progress import CancelToken

from .test_apply import unit


class TwoModels:
    """The engine side CompanionModels needs, serving an in-memory refiner: the embedded tiny
    model (which the tiny ControlNets fit) with scaled UNet weights under another file name."""

    device = torch.device("cpu")

    def __init__(self, main) -> None:
        self.main = main
        self.refiner = build_embedded_model()
        with torch.no_grad():
            for parameter in self.refiner.unet.parameters():
                parameter.mul_(0.9)
        self.refiner.info = CheckpointInfo.for_file("refiner.safetensors", "/models/refiner.safetensors", None)

    def checkpoints(self):
        return [self.main.info, self.refiner.info]

    def companion(self, info):
        assert info is self.refiner.info
        return self.refiner

    def apply_vae(self, model, job) -> None:
        return None


class ControlledCalls:
    """Which UNet ran, in call order, and whether it got ControlNet residuals."""

    def __init__(self, **unets) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.handles = [
            unet.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, unet in unets.items()
        ]

    def _hook(self, name):
        def record(module, args, kwargs):
            self.calls.append((name, kwargs.get("down_block_additional_residuals") is not None))

        return record

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def run(cn_engine, job, models):
    main = cn_engine.load()
    job, controls = prepare_controls(cn_engine.controlnets, main, job, cn_engine.annotator_dir)
    companions = CompanionModels(models, job, main)
    try:
        return run_txt2img_refined(main, job, RecordingObserver(), CancelToken(), companions)
    finally:
        companions.close()


def test_units_act_on_the_base_model_only_and_the_switch_happens(cn_engine):
    main = cn_engine.load()
    models = TwoModels(main)
    job = replace(make_job(seeds=(3,), steps=4), refiner=RefinerParams("refiner", 0.5), controlnet_units=(unit(),))
    calls = ControlledCalls(base=main.unet, refiner=models.refiner.unet)
    try:
        result = run(cn_engine, job, models)
    finally:
        calls.close()
    names = [name for name, _ in calls.calls]
    assert "base" in names and "refiner" in names and names == sorted(names)  # base first, then refiner
    assert all(controlled == (name == "base") for name, controlled in calls.calls)
    assert result.extra_generation_params["Refiner"] == "refiner"
    plain = run(cn_engine, replace(job, controlnet_units=()), models)
    assert not np.array_equal(np.asarray(plain.images[0].image), np.asarray(result.images[0].image))

"""A ControlNet folder with the same tiny network in both formats, plus a second network,
and one engine (the embedded tiny model) that sees that folder."""

from __future__ import annotations

import pytest

from .helpers import tiny_controlnet, write_diffusers, write_original


@pytest.fixture(scope="session")
def controlnet_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models") / "ControlNet"
    write_original(tiny_controlnet(1), root / "tiny_canny.safetensors", prefix="control_model.")
    write_diffusers(tiny_controlnet(1), root / "tiny_canny_diffusers")
    write_original(tiny_controlnet(2), root / "sub" / "tiny_depth.safetensors")
    return root


@pytest.fixture(scope="session")
def cn_engine(controlnet_dir):
    import torch

    torch.set_num_threads(1)
    from webui_api.engine.facade import Engine

    built = Engine(
        device="cpu",
        dtype="float32",
        controlnet_dirs=(controlnet_dir,),
        annotator_dir=controlnet_dir.parent / "annotator",
    )
    built.load()
    return built

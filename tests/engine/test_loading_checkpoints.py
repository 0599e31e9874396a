"""Single-file checkpoints in the original layout, loaded offline through the user's path:
bit-exact round trips for every family, detection (inpainting, v-prediction), precision,
pickles, and the files that must be refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from tests.engine.helpers import RecordingObserver, make_job
from tests.engine.ldm_checkpoints import build_networks, ldm_state_dict, write_checkpoint
from webui_api.engine.facade import Engine
from webui_api.engine.loading import load_clip_tokenizer
from webui_api.engine.loading.builder import looks_like_v_prediction
from webui_api.engine.loading.checkpoint import LoadOptions, load_checkpoint
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.loading.files import UnusableModelFile, read_state_dict
from webui_api.engine.models import CheckpointInfo, LoadedModel, scaled_linear_alphas_cumprod
from webui_api.progress import CancelToken

FAMILIES = ["sd1", "sd2", "sdxl", "sdxl-refiner"]
CPU32 = LoadOptions(torch.device("cpu"), torch.float32, torch.float32)


@pytest.fixture(scope="module")
def sources():
    """The source networks of each family (seeded, so every run writes the same files)."""
    return {family: build_networks(family, seed=index) for index, family in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, sources):
    """An A1111 checkpoint folder with one original-layout file per family."""
    root = tmp_path_factory.mktemp("Stable-diffusion")
    for family, nets in sources.items():
        write_checkpoint(root / f"{family}.safetensors", nets)
    return root


def _load(path: Path, options: LoadOptions = CPU32, config: str | None = None) -> LoadedModel:
    return load_checkpoint(CheckpointInfo.for_file(path.name, str(path), None, config=config), options)


def _same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_through_the_engine_is_bit_exact(family, folder, sources):
    engine = Engine(device="cpu", dtype="float32", paths=ModelPaths(ckpt_dirs=(folder,)))
    model = engine.load(f"{family}.safetensors")
    nets = sources[family]
    assert model.family == family and model.prediction_type == "epsilon" and model.unet_in_channels == 4
    assert _same_parameters(model.unet, nets.unet) and _same_parameters(model.vae, nets.vae)
    for slot in ("text_encoder", "text_encoder_2"):
        source, loaded = getattr(nets, slot), getattr(model, slot)
        assert (source is None) == (loaded is None), slot
        if source is not None:
            assert _same_parameters(source, loaded)
            ids = torch.tensor([[49406, 320, 2368, 49407] + [0] * 73])
            assert torch.equal(source(ids).last_hidden_state, loaded(ids).last_hidden_state)


def test_loaded_unet_and_vae_compute_exactly_what_the_source_computes(folder, sources):
    model = _load(folder / "sdxl.safetensors")
    nets = sources["sdxl"]
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 128, generator=generator)
    added = {
        "text_embeds": torch.randn(1, 64, generator=generator),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
    }
    with torch.no_grad():
        expected = nets.unet(x, torch.tensor([500.0]), encoder_hidden_states=context, added_cond_kwargs=added).sample
        got = model.unet(x, torch.tensor([500.0]), encoder_hidden_states=context, added_cond_kwargs=added).sample
        assert torch.equal(expected, got)
        assert torch.equal(nets.vae.decode(x).sample, model.vae.decode(x).sample)


def test_sd1_txt2img_from_the_file_equals_the_source_model(folder, sources):
    """The whole pipeline on the loaded checkpoint gives the source networks' exact image."""
    nets = sources["sd1"]
    source = LoadedModel(
        info=CheckpointInfo.for_file("src", "src", None),
        unet=nets.unet,
        vae=nets.vae,
        text_encoder=nets.text_encoder,
        tokenizer=load_clip_tokenizer(),
        alphas_cumprod=scaled_linear_alphas_cumprod(),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    from webui_api.engine.pipeline import run_txt2img

    job = make_job(seeds=(11,), steps=3, width=64, height=64)
    expected = run_txt2img(source, job, RecordingObserver(), CancelToken()).images[0].image
    got = run_txt2img(_load(folder / "sd1.safetensors"), job, RecordingObserver(), CancelToken()).images[0].image
    assert np.array_equal(np.asarray(expected), np.asarray(got))


def test_half_precision_file_loads_in_float32_on_cpu(tmp_path, sources):
    path = write_checkpoint(tmp_path / "half.safetensors", sources["sd1"], dtype=torch.float16)
    model = _load(path)
    assert next(model.unet.parameters()).dtype == torch.float32
    expected = sources["sd1"].unet.conv_in.weight.to(torch.float16).to(torch.float32)
    assert torch.equal(model.unet.conv_in.weight, expected)


def test_half_precision_load_and_no_half_vae(folder):
    model = _load(folder / "sd1.safetensors", LoadOptions(torch.device("cpu"), torch.bfloat16, torch.float32))
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    assert next(model.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(model.vae.parameters()).dtype == torch.float32
    assert model.alphas_cumprod.dtype == torch.float32


def test_inpainting_checkpoints_are_detected_by_their_nine_channels(tmp_path):
    for family in ("sd1", "sdxl"):
        path = write_checkpoint(
            tmp_path / f"{family}-inpainting.safetensors", build_networks(family, seed=5, in_channels=9)
        )
        model = _load(path)
        assert model.unet_in_channels == 9 and model.unet.config.in_channels == 9
        assert model.architecture == f"{family}-inpaint" and model.family == family


def test_sd2_v_prediction_from_a_yaml_beside_the_file(tmp_path, sources):
    path = write_checkpoint(tmp_path / "v2-768-v.safetensors", sources["sd2"])
    config = tmp_path / "v2-768-v.yaml"
    config.write_text("model:\n  params:\n    parameterization: \"v\"\n    linear_start: 0.00085\n")
    model = _load(path, config=str(config))
    assert model.prediction_type == "v_prediction" and model.architecture == "sd2-v"
    config.write_text("model:\n  params:\n    parameterization: eps\n")
    assert _load(path, config=str(config)).prediction_type == "epsilon"


def test_sdxl_v_prediction_from_an_sgm_yaml(tmp_path, sources):
    path = write_checkpoint(tmp_path / "xl-v.safetensors", sources["sdxl"])
    config = tmp_path / "xl-v.yaml"
    config.write_text(
        "model:\n  params:\n    denoiser_config:\n      params:\n        scaling_config:\n"
        "          target: sgm.modules.diffusionmodules.denoiser_scaling.VScaling\n"
    )
    assert _load(path, config=str(config)).prediction_type == "v_prediction"


class _ProbeUNet(torch.nn.Module):
    """Stands in for a trained SD2 UNet: returns x + offset whatever the inputs."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"cross_attention_dim": 1024})()

    def forward(self, x, timestep, encoder_hidden_states, return_dict=False):
        assert int(timestep[0]) == 999 and encoder_hidden_states.shape == (1, 2, 1024)
        return (x + self.offset,)


def test_a1111_v_prediction_probe():
    assert looks_like_v_prediction(_ProbeUNet(-1.5)) is True
    assert looks_like_v_prediction(_ProbeUNet(0.3)) is False


def test_pickled_checkpoints_load_with_weights_only(tmp_path, sources):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm_state_dict(sources["sd1"]), "global_step": 470000}, path)
    model = _load(path)
    assert _same_parameters(model.unet, sources["sd1"].unet)


class CodeInPickle:
    """A pickle that names a class: weights_only unpickling must refuse it."""

    def __reduce__(self):
        return (CodeInPickle, ())


def test_pickle_with_code_is_refused_unless_unsafe_is_allowed(tmp_path, sources):
    path = tmp_path / "suspicious.ckpt"
    torch.save({"state_dict": ldm_state_dict(sources["sd1"]), "payload": CodeInPickle()}, path)
    with pytest.raises(UnusableModelFile, match="--disable-safe-unpickle") as caught:
        _load(path)
    assert caught.value.status_code == 400 and "suspicious.ckpt" in caught.value.detail
    unsafe = LoadOptions(torch.device("cpu"), torch.float32, torch.float32, allow_unsafe_pickle=True)
    assert _load(path, unsafe).family == "sd1"


def test_truncated_safetensors_is_refused_before_reading(tmp_path, folder):
    data = (folder / "sd1.safetensors").read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnusableModelFile, match="truncated"):
        _load(path)
    path.write_bytes(data[:5])
    with pytest.raises(UnusableModelFile, match="too short"):
        _load(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(UnusableModelFile, match="not JSON"):
        _load(path)


def test_unknown_architectures_are_refused_with_what_was_found(tmp_path):
    path = tmp_path / "classifier.safetensors"
    safetensors.torch.save_file({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, str(path))
    with pytest.raises(UnusableModelFile, match="unknown architecture.*2 tensors"):
        _load(path)
    sd3 = tmp_path / "sd3.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.x_embedder.proj.weight": torch.zeros(2, 2)}, str(sd3))
    with pytest.raises(UnusableModelFile, match="Stable Diffusion 3"):
        _load(sd3)


def test_missing_and_misshapen_tensors_are_named(tmp_path, sources):
    state = ldm_state_dict(sources["sd1"])
    key = "model.diffusion_model.output_blocks.1.1.conv.weight"  # the tiny UNet's first upsampler
    incomplete = {k: v for k, v in state.items() if k != key}
    path = tmp_path / "incomplete.safetensors"
    safetensors.torch.save_file(incomplete, str(path))
    with pytest.raises(UnusableModelFile, match="UNet is incomplete: 1 of .* missing.*output_blocks.1.1.conv.weight"):
        _load(path)
    bad_key = "first_stage_model.decoder.conv_in.bias"
    safetensors.torch.save_file({**state, bad_key: torch.zeros(3)}, str(path))
    with pytest.raises(UnusableModelFile, match="decoder.conv_in.bias.*shape"):
        _load(path)


def test_read_state_dict_refuses_other_file_types(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"PK")
    with pytest.raises(UnusableModelFile, match="unsupported file type"):
        read_state_dict(path)
    empty = tmp_path / "empty.ckpt"
    torch.save({"step": 3}, empty)
    with pytest.raises(UnusableModelFile, match="no tensors"):
        read_state_dict(empty)


def test_pickle_module_is_not_used_for_safetensors(tmp_path, folder, monkeypatch):
    """Reading a safetensors file never unpickles anything."""

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling while reading safetensors")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert read_state_dict(folder / "sd2.safetensors")


def _write_diffusers_folder(root: Path, nets, prediction_type: str = "epsilon") -> Path:
    """What `pipeline.save_pretrained` writes, component by component."""
    index = {
        "_class_name": "StableDiffusionXLPipeline" if nets.text_encoder_2 is not None else "StableDiffusionPipeline"
    }
    for slot in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(nets, slot)
        index[slot] = (
            [None, None]
            if module is None
            else ["diffusers" if slot in ("unet", "vae") else "transformers", type(module).__name__]
        )
        if module is not None:
            module.save_pretrained(root / slot)
    (root / "scheduler").mkdir(parents=True)
    (root / "scheduler" / "scheduler_config.json").write_text(f'{{"prediction_type": "{prediction_type}"}}')
    (root / "model_index.json").write_text(__import__("json").dumps(index))
    return root


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_folders_are_listed_and_load_bit_exactly(tmp_path, sources, family):
    sd = tmp_path / "Stable-diffusion"
    _write_diffusers_folder(sd / "pipelines" / f"my-{family}", sources[family], prediction_type="v_prediction")
    write_checkpoint(sd / "single.safetensors", sources["sd1"])
    engine = Engine(device="cpu", dtype="float32", paths=ModelPaths(ckpt_dirs=(sd,)))
    assert [info.api_item()["title"] for info in engine.checkpoints()] == [
        "single.safetensors",
        f"pipelines/my-{family}",
    ]
    model = engine.load(f"my-{family}")
    assert model.family == family and model.prediction_type == "v_prediction"
    nets = sources[family]
    assert _same_parameters(model.unet, nets.unet) and _same_parameters(model.vae, nets.vae)
    assert _same_parameters(model.text_encoder, nets.text_encoder)
    assert model.info.sha256 is None and model.vae_scale_factor == nets.vae.config.scaling_factor


def test_broken_diffusers_folder_is_refused(tmp_path, sources):
    root = _write_diffusers_folder(tmp_path / "Stable-diffusion" / "broken", sources["sd1"])
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    engine = Engine(device="cpu", paths=ModelPaths(ckpt_dirs=(tmp_path / "Stable-diffusion",)))
    with pytest.raises(UnusableModelFile, match="no weights named diffusion_pytorch_model"):
        engine.load("broken")

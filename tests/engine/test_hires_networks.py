"""LoRAs of the hires prompt: A1111 merges the hires prompt's own networks for each second
pass (hr_extra_network_data) and the prompt's for each first pass; weights come back exact."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import safetensors.torch
import torch

from tests.engine.helpers import RecordingObserver, make_job
from tests.engine.ldm_checkpoints import (
    build_networks,
    kohya_sd1_lora,
    write_checkpoint,
)
from webui_api.engine.facade import Engine
from webui_api.engine.job_networks import hires_network_calls
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.loading.hashes import addnet_hash
from webui_api.errors import NotImplementedFeature
from webui_api.jobs import HiresParams
from webui_api.progress import CancelToken

PROBE = "mid_block.attentions.0.proj_out"  # a UNet layer every test LoRA changes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    nets = build_networks("sd1", seed=1)
    write_checkpoint(root / "models" / "Stable-diffusion" / "base.safetensors", nets)
    lora_dir = root / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    safetensors.torch.save_file(kohya_sd1_lora(nets.unet, nets.text_encoder), str(lora_dir / "style.safetensors"))
    safetensors.torch.save_file(
        kohya_sd1_lora(nets.unet, nets.text_encoder, seed=3), str(lora_dir / "other.safetensors")
    )
    return root


@pytest.fixture(scope="module")
def engine(data):
    paths = ModelPaths(
        data_dir=data, ckpt_dirs=(data / "models" / "Stable-diffusion",), lora_dirs=(data / "models" / "Lora",)
    )
    return Engine(device="cpu", dtype="float32", paths=paths)


def hires_job(prompt: str, hr_prompt: str, n_iter: int = 1):
    job = make_job(prompts=(prompt,), seeds=tuple(range(3, 3 + n_iter)), steps=2, n_iter=n_iter)
    params = HiresParams(upscale_width=96, upscale_height=96, upscaler="Latent", latent_mode="bilinear",
                         latent_antialias=False, steps=2, denoising_strength=0.6, sampling=job.sampling,
                         prompts=(hr_prompt,) * n_iter, negative_prompts=job.negative_prompts)
    return replace(job, hires=params)


class WeightProbe(RecordingObserver):
    """Records one UNet weight's sum at every sampling step: which networks are merged."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.sums: list[float] = []

    def sampling_step(self, step, total_steps, make_preview) -> None:
        super().sampling_step(step, total_steps, make_preview)
        self.sums.append(float(self.engine.loaded.unet.get_submodule(PROBE).weight.double().sum()))


def run(engine: Engine, job, observer=None):
    return engine.txt2img(job, observer or RecordingObserver(), CancelToken())


def weights(engine: Engine) -> dict[str, torch.Tensor]:
    model = engine.load()
    return {f"{n}.{k}": v.clone() for n, m in model.modules().items() for k, v in m.state_dict().items()}


def test_hires_calls_are_read_per_batch():
    assert hires_network_calls(make_job()) is None
    assert [c.name for c in hires_network_calls(hires_job("a", "b <lora:x:0.5>"))] == ["x"]
    job = hires_job("a", "b", n_iter=2)
    mixed = replace(job, hires=replace(job.hires, prompts=("<lora:x:1> b", "b")))
    with pytest.raises(NotImplementedFeature, match="hires prompts"):
        hires_network_calls(mixed)


def test_each_pass_samples_with_its_own_prompts_networks(engine):
    before = weights(engine)
    plain = WeightProbe(engine)
    run(engine, hires_job("a cat", "a cat", n_iter=2), plain)
    only_hires = WeightProbe(engine)
    result = run(engine, hires_job("a cat", "a cat <lora:style:1>", n_iter=2), only_hires)
    first, second = plain.sums[0], only_hires.sums[2]
    # steps per batch: 2 first-pass, then the second pass's; the first pass of each batch is LoRA-free again
    assert only_hires.sums[:2] == [first, first] and only_hires.sums[4:6] == [first, first]
    assert second != first and only_hires.sums[2:4] == only_hires.sums[6:8] == [second, second]
    assert all(torch.equal(before[k], v) for k, v in weights(engine).items())
    assert result.images[0].prompt == "a cat"


def test_first_pass_lora_is_lifted_for_a_hires_prompt_without_it(engine):
    plain = WeightProbe(engine)
    run(engine, hires_job("a cat", "a cat"), plain)
    swapped = WeightProbe(engine)
    run(engine, hires_job("a cat <lora:style:1>", "a cat"), swapped)
    assert swapped.sums[0] != plain.sums[0] and swapped.sums[2:] == plain.sums[2:]


def test_images_and_infotext_cover_both_passes(engine, data):
    plain = run(engine, hires_job("a cat", "a cat"))
    hires_only = run(engine, hires_job("a cat", "a cat <lora:other:1>"))
    assert not np.array_equal(np.asarray(plain.images[0].image), np.asarray(hires_only.images[0].image))
    both = run(engine, hires_job("a cat <lora:style:1>", "a cat <lora:other:1> <lora:style:1>"))
    style = addnet_hash(data / "models" / "Lora" / "style.safetensors")[:12]
    other = addnet_hash(data / "models" / "Lora" / "other.safetensors")[:12]
    assert both.extra_generation_params["Lora hashes"] == f"style: {style}, other: {other}"
    assert hires_only.extra_generation_params["Lora hashes"] == f"other: {other}"


def test_same_networks_in_both_prompts_stay_merged(engine):
    same = WeightProbe(engine)
    run(engine, hires_job("a cat <lora:style:1>", "a dog <lora:style:1>"), same)
    assert len(set(same.sums)) == 1


def test_unknown_hires_lora_is_skipped_like_a1111_and_weights_restored(engine):
    before = weights(engine)
    result = run(engine, hires_job("a cat <lora:style:1>", "a cat <lora:nope:1>"))
    assert "nope" not in result.extra_generation_params.get("Lora hashes", "")
    assert all(torch.equal(before[k], v) for k, v in weights(engine).items())

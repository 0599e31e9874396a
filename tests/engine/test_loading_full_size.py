"""Full-size random-weight checkpoints in the original layout (slow: GBs of RAM, minutes).

Each test writes a checkpoint with the released architecture's every tensor under its
original name, loads it offline through the engine (the code a user's request runs), checks
tensor counts and parameter totals, and runs one denoising step at a tiny latent size.
Run with `pytest -m slow tests/engine/test_loading_full_size.py -s` to see time and memory.
"""

from __future__ import annotations

import gc
import os
import resource
import time

import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from tests.engine.ldm_checkpoints import build_networks, ldm_state_dict
from webui_api.engine.facade import Engine
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.progress import CancelToken

os.environ["HF_HUB_OFFLINE"] = "1"

# family -> (tensors in the file, UNet parameters, engine dtype on CPU, yaml beside the file)
CASES = {
    "sd1": (686 + 248 + 196, 859_520_964, "float32", None),
    "sd2": (686 + 248 + 24 * 12 + 6, 865_910_724, "float32", 'model:\n  params:\n    parameterization: "v"\n'),
    "sdxl": (1680 + 248 + 196 + 32 * 12 + 6, 2_567_463_684, "bfloat16", None),
    "sdxl-refiner": (1220 + 248 + 32 * 12 + 6, 2_259_526_660, "bfloat16", None),
}
EXPECTED = {
    "sd1": ("sd1", "epsilon"),
    "sd2": ("sd2-v", "v_prediction"),
    "sdxl": ("sdxl", "epsilon"),
    "sdxl-refiner": ("sdxl-refiner", "epsilon"),
}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _write(family: str, folder, yaml_text: str | None) -> tuple[int, float]:
    """Write the checkpoint in float16 (how they are distributed); returns (tensors, seconds)."""
    import safetensors.torch

    started = time.perf_counter()
    state = ldm_state_dict(build_networks(family, seed=7, full_size=True, dtype=torch.float16))
    path = folder / f"{family}-full.safetensors"
    safetensors.torch.save_file(state, str(path))
    if yaml_text:
        path.with_suffix(".yaml").write_text(yaml_text)
    count = len(state)
    del state
    gc.collect()
    return count, time.perf_counter() - started


def _one_step(model) -> torch.Tensor:
    """One UNet evaluation on an 8x8 latent with conditioning of the family's shapes."""
    dtype, cfg = model.dtype, model.unet.config
    x = torch.randn(1, cfg.in_channels, 8, 8, dtype=dtype)
    context = torch.randn(1, 77, cfg.cross_attention_dim, dtype=dtype)
    kwargs = {}
    if cfg.addition_embed_type == "text_time":
        pooled = model.text_encoder_2.config.projection_dim
        times = (cfg.projection_class_embeddings_input_dim - pooled) // cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, dtype=dtype),
            "time_ids": torch.ones(1, times, dtype=dtype),
        }
    with torch.inference_mode():
        out = model.unet(x, torch.tensor([999.0]), encoder_hidden_states=context, return_dict=False, **kwargs)[0]
        image = model.vae.decode(out[:, :4].to(model.vae.dtype) / model.vae_scale_factor).sample
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", list(CASES))
def test_full_size_checkpoint_loads_offline_and_runs_a_step(family, tmp_path):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tensors, unet_parameters, dtype, yaml_text = CASES[family]
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    written, write_seconds = _write(family, folder, yaml_text)
    assert written == tensors
    engine = Engine(device="cpu", dtype=dtype, paths=ModelPaths(ckpt_dirs=(folder,)))
    started = time.perf_counter()
    model = engine.load(f"{family}-full")
    load_seconds = time.perf_counter() - started
    assert (model.architecture, model.prediction_type) == EXPECTED[family]
    assert sum(p.numel() for p in model.unet.parameters()) == unet_parameters
    assert model.info.sha256 is not None and model.info.title.endswith(f"[{model.info.hash}]")
    started = time.perf_counter()
    if family == "sd1":
        result = engine.txt2img(make_job(steps=1, width=64, height=64), RecordingObserver(), CancelToken())
        assert result.images[0].image.size == (64, 64)
    else:
        _one_step(model)
    step_seconds = time.perf_counter() - started
    print(
        f"\n{family}: {written} tensors; write {write_seconds:.1f} s, load+hash {load_seconds:.1f} s, "
        f"one step {step_seconds:.1f} s, peak RSS {_peak_rss_gib():.1f} GiB"
    )

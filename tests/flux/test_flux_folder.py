"""A Flux.1 diffusers folder (FluxPipeline layout, tokenizer_2 included) through the engine."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from tests.engine.helpers import RecordingObserver, make_job
from tests.flux.files import T5_VOCAB, TINY, write_t5_tokenizer
from webui_api.engine.facade import Engine
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.progress import CancelToken


def _write_pipeline(root) -> dict:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

    from webui_api.engine.loading.flux_keys import rope_axes

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=TINY.head_dim,
        num_attention_heads=TINY.hidden // TINY.head_dim, joint_attention_dim=TINY.context,
        pooled_projection_dim=TINY.pooled, guidance_embeds=True, axes_dims_rope=rope_axes(TINY.head_dim),
    )
    vae = AutoencoderKL(
        latent_channels=16, block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, use_quant_conv=False,
        use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
    )
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=TINY.pooled, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2))
    t5 = T5EncoderModel(T5Config(vocab_size=T5_VOCAB, d_model=TINY.context, d_kv=8, num_heads=2, d_ff=64,
                                 num_layers=1, feed_forward_proj="gated-gelu"))
    for name, module in (("transformer", transformer), ("vae", vae), ("text_encoder", clip), ("text_encoder_2", t5)):
        module.save_pretrained(root / name)
    write_t5_tokenizer(root / "t5-source")
    T5TokenizerFast.from_pretrained(str(root / "t5-source")).save_pretrained(root / "tokenizer_2")
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer_2": ["transformers", "T5TokenizerFast"]}
    (root / "model_index.json").write_text(json.dumps(index))
    return {"transformer": transformer}


def test_flux_pipeline_folder_loads_and_generates(tmp_path):
    ckpt_dir = tmp_path / "Stable-diffusion"
    sources = _write_pipeline(ckpt_dir / "FLUX.1-tiny")
    engine = Engine(device="cpu", dtype="float32", paths=ModelPaths(ckpt_dirs=(ckpt_dir,)))
    title = next(info.title for info in engine.checkpoints() if "FLUX.1-tiny" in info.title)
    model = engine.load(title)
    assert model.family == "flux" and model.architecture == "flux-dev" and model.vae_shift_factor == 0.1159
    ours, theirs = model.unet.state_dict(), sources["transformer"].state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    job = replace(make_job(width=32, height=32, steps=2, cfg_scale=1.0), model_title=title)
    result = engine.txt2img(job, RecordingObserver(), CancelToken())
    assert result.images[0].image.size == (32, 32)

"""Flux.1 files built in the tests from the published layout (BFL names), any width/depth.

`bfl_transformer_shapes` lists every tensor of BFL's transformer file; the published model is
width 3072, 128-wide heads, 19 double and 38 single blocks, 64 input channels, T5 context 4096,
CLIP pooled 768. Tests use fewer blocks (and, where no oracle pins the width, narrower ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from webui_api.engine.facade import Engine
from webui_api.engine.loading.discovery import ModelPaths


@dataclass(frozen=True)
class FluxSizes:
    hidden: int = 3072
    head_dim: int = 128
    double: int = 19
    single: int = 38
    in_channels: int = 64
    context: int = 4096
    pooled: int = 768
    guidance: bool = True  # dev has the guidance embedder, schnell not


TINY = FluxSizes(hidden=32, head_dim=16, double=2, single=2, in_channels=64, context=32, pooled=32)


def bfl_transformer_shapes(s: FluxSizes) -> dict[str, tuple[int, ...]]:
    h, mlp = s.hidden, 4 * s.hidden
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out: int, inp: int) -> None:
        shapes[f"{name}.weight"] = (out, inp)
        shapes[f"{name}.bias"] = (out,)

    linear("img_in", h, s.in_channels)
    linear("txt_in", h, s.context)
    embedders = ["time_in", "vector_in"] + (["guidance_in"] if s.guidance else [])
    for name in embedders:
        linear(f"{name}.in_layer", h, s.pooled if name == "vector_in" else 256)
        linear(f"{name}.out_layer", h, h)
    for i in range(s.double):
        p = f"double_blocks.{i}."
        for stream in ("img", "txt"):
            linear(f"{p}{stream}_mod.lin", 6 * h, h)
            linear(f"{p}{stream}_attn.qkv", 3 * h, h)
            shapes[f"{p}{stream}_attn.norm.query_norm.scale"] = (s.head_dim,)
            shapes[f"{p}{stream}_attn.norm.key_norm.scale"] = (s.head_dim,)
            linear(f"{p}{stream}_attn.proj", h, h)
            linear(f"{p}{stream}_mlp.0", mlp, h)
            linear(f"{p}{stream}_mlp.2", h, mlp)
    for i in range(s.single):
        p = f"single_blocks.{i}."
        linear(f"{p}modulation.lin", 3 * h, h)
        linear(f"{p}linear1", 3 * h + mlp, h)
        linear(f"{p}linear2", h, h + mlp)
        shapes[f"{p}norm.query_norm.scale"] = (s.head_dim,)
        shapes[f"{p}norm.key_norm.scale"] = (s.head_dim,)
    linear("final_layer.adaLN_modulation.1", 2 * h, h)
    linear("final_layer.linear", s.in_channels, h)
    return shapes


def random_state(
    shapes: dict[str, tuple[int, ...]], seed: int = 0, scale: float = 0.05, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random tensors of `shapes`, drawn in float32 one at a time and stored in `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    return {key: (torch.randn(shape, generator=generator) * scale).to(dtype) for key, shape in shapes.items()}


_POOL = 1_000_003  # prime: tensors tiled from the pool do not repeat along any power-of-two row width


def tiled_state(
    shapes: dict[str, tuple[int, ...]], seed: int = 0, scale: float = 0.05, dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """Random-looking tensors for full-width files, fast: each is a slice (at its own offset) of
    one seeded normal pool, tiled; drawing hundreds of millions of normals takes minutes on two
    shared cores, copying takes seconds."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(_POOL, generator=generator) * scale
    state: dict[str, torch.Tensor] = {}
    for index, (key, shape) in enumerate(shapes.items()):
        count = math.prod(shape)
        offset = (index * 7919) % _POOL
        tiled = pool.repeat(-(-(count + offset) // _POOL))
        state[key] = tiled[offset : offset + count].to(dtype, copy=True).reshape(shape)
        del tiled
    return state


# ---------------------------------------------------------------------------
# Published encoder/VAE layouts at any width and depth, as shapes (built on the meta device)
# ---------------------------------------------------------------------------


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def t5_shapes(width: int, d_ff: int, heads: int, layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """T5 v1.1 encoder tensors as ComfyUI/Forge files store them (`shared`, no `embed_tokens`)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab, d_model=width, d_kv=width // heads, num_heads=heads, d_ff=d_ff,
                      num_layers=layers, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    with torch.device("meta"):
        shapes = _meta_shapes(T5EncoderModel(config))
    shapes.pop("encoder.embed_tokens.weight", None)
    return shapes


def clip_shapes(width: int, intermediate: int, heads: int, layers: int, projection: bool) -> dict[str, tuple[int, ...]]:
    """CLIP text encoder tensors with transformers' full names; SD3 files add `text_projection`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=intermediate,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77)
    with torch.device("meta"):
        shapes = _meta_shapes(CLIPTextModel(config))
    shapes = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in shapes.items()}
    shapes.pop("text_model.embeddings.position_ids", None)
    if projection:
        shapes["text_projection.weight"] = (width, width)
    return shapes


def vae_shapes(widths: tuple[int, ...], layers: int) -> dict[str, tuple[int, ...]]:
    """The 16-channel autoencoder (Flux's ae.safetensors, SD3's VAE) with original names."""
    from diffusers import AutoencoderKL

    from webui_api.engine.loading import ldm_keys

    with torch.device("meta"):
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, block_out_channels=widths,
            down_block_types=("DownEncoderBlock2D",) * len(widths), up_block_types=("UpDecoderBlock2D",) * len(widths),
            layers_per_block=layers, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
        )
    cut = len(ldm_keys.VAE_PREFIX)
    return {ldm_keys.vae_key_to_ldm(key, len(widths))[cut:]: value for key, value in _meta_shapes(vae).items()}


# ---------------------------------------------------------------------------
# The other parts: VAE (16 latent channels, no quant convs), CLIP-L, T5 and its tokenizer
# ---------------------------------------------------------------------------

T5_WORDS = ["a", "cat", "dog", "red", "blue", "photo", "of", "the", "on", "grass", "sky", "house"]


def write_t5_tokenizer(folder) -> None:
    """A small T5-style tokenizer (pad 0, </s> 1, <unk> 2; SentencePiece-style unigram)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in T5_WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -3.0)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "extra_ids": 0,
              "tokenizer_class": "T5Tokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


T5_VOCAB = 32128  # T5 v1.1's embedding rows: both the small test tokenizer and the bundled one fit


def tiny_t5_state(width: int, seed: int = 3) -> dict[str, torch.Tensor]:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=T5_VOCAB, d_model=width, d_kv=8, num_heads=2, d_ff=2 * width, num_layers=2,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    state = T5EncoderModel(config).state_dict()
    state.pop("encoder.embed_tokens.weight", None)  # ComfyUI/Forge files keep only `shared`
    return state


def tiny_clip_state(width: int, seed: int = 4) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77)
    state = CLIPTextModel(config).state_dict()
    # files keep transformers' full names ("text_model.embeddings..."), whatever this version's module says
    state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()}
    state.pop("text_model.embeddings.position_ids", None)
    return state


def tiny_vae_state(seed: int = 5) -> dict[str, torch.Tensor]:
    """Flux's autoencoder layout (original names, 16 latent channels, no quant convs), small."""
    from diffusers import AutoencoderKL

    from webui_api.engine.loading import ldm_keys

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
    )
    cut = len(ldm_keys.VAE_PREFIX)
    return {ldm_keys.vae_key_to_ldm(key, 4)[cut:]: value for key, value in vae.state_dict().items()}


def tiny_parts(sizes: FluxSizes = TINY) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "transformer": random_state(bfl_transformer_shapes(sizes)),
        "vae": tiny_vae_state(),
        "clip_l": tiny_clip_state(sizes.pooled),
        "t5xxl": tiny_t5_state(sizes.context),
    }


def all_in_one(parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    state = {"model.diffusion_model." + k: v for k, v in parts["transformer"].items()}
    state |= {"vae." + k: v for k, v in parts["vae"].items()}
    state |= {"text_encoders.clip_l.transformer." + k: v for k, v in parts["clip_l"].items()}
    state |= {"text_encoders.t5xxl.transformer." + k: v for k, v in parts["t5xxl"].items()}
    return state


def write_models(root, parts, layout: str = "bfl") -> dict[str, object]:
    """An A1111/Forge models folder: the checkpoint in Stable-diffusion/Flux, the modules (for the
    BFL layout) in VAE and text_encoder, and the T5 tokenizer; returns the paths."""
    from safetensors.torch import save_file

    ckpt_dir = root / "Stable-diffusion" / "Flux"
    vae_dir, te_dir = root / "VAE", root / "text_encoder"
    for folder in (ckpt_dir, vae_dir, te_dir):
        folder.mkdir(parents=True, exist_ok=True)
    write_t5_tokenizer(te_dir / "t5-tokenizer")
    paths: dict[str, object] = {"ckpt_dir": root / "Stable-diffusion", "vae_dir": vae_dir, "te_dir": te_dir}
    if layout == "all-in-one":
        paths["checkpoint"] = ckpt_dir / "flux-aio.safetensors"
        save_file({k: v.contiguous() for k, v in all_in_one(parts).items()}, str(paths["checkpoint"]))
        return paths
    paths["checkpoint"] = ckpt_dir / "flux-bfl.safetensors"
    save_file({k: v.contiguous() for k, v in parts["transformer"].items()}, str(paths["checkpoint"]))
    for name, folder, part in (("ae", vae_dir, "vae"), ("clip_l", te_dir, "clip_l"), ("t5xxl", te_dir, "t5xxl")):
        paths[part] = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in parts[part].items()}, str(paths[part]))
    return paths


def cpu_engine(paths: dict) -> Engine:
    """A float32 CPU engine reading the checkpoint, VAE and text-encoder folders `write_models` made."""
    model_paths = ModelPaths(
        ckpt_dirs=(paths["ckpt_dir"],), vae_dirs=(paths["vae_dir"],), text_encoder_dirs=(paths["te_dir"],)
    )
    return Engine(device="cpu", dtype="float32", paths=model_paths)


def write_gguf(path, state: dict, quantized: str = "Q8_0") -> None:
    """A GGUF file as city96's conversions: the state's names, 2-D weights whose rows fit whole
    blocks quantized to `quantized`, everything else float32."""
    import gguf
    from gguf import quants

    qtype = getattr(gguf.GGMLQuantizationType, quantized)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    writer = gguf.GGUFWriter(str(path), arch="flux")
    for name, tensor in state.items():
        values = tensor.float().numpy()
        if values.ndim == 2 and values.shape[1] % block == 0:
            writer.add_tensor(name, quants.quantize(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

"""Checkpoint descriptions and loaded models, plus the embedded tiny test model.

`CheckpointInfo` is what /sdapi/v1/sd-models lists and what names resolve to; `LoadedModel`
is the set of diffusers/transformers components the pipeline runs (real checkpoints are
read by `engine.loading`). When the model folders hold no checkpoint, the server serves an
embedded, tiny SD1-architecture network with fixed-seed random weights: it exercises every
code path (tokenizer, text encoder, UNet, VAE, samplers) in about a second on a CPU, and its
images are noise.

Text-encoder conventions per family (what prompt encoding can rely on):
- "sd1": `text_encoder` CLIP-L (12 layers), `tokenizer` pads with end-of-text.
- "sd2": `text_encoder` OpenCLIP-H built with 23 of its 24 layers, so `last_hidden_state` is
  A1111's penultimate layer + final LayerNorm (CLIP skip does not apply); `tokenizer` pads 0.
- "sdxl": `text_encoder` CLIP-L, `text_encoder_2` OpenCLIP-G with projection (32 layers;
  `text_embeds` is the pooled vector); `tokenizer_2` pads 0.
- "sdxl-refiner": only `text_encoder_2` / `tokenizer_2` (OpenCLIP-G); the first pair is None.
- "flux": `text_encoder` CLIP-L (pooled only), `text_encoder_2` T5-XXL.
- "sd3": `text_encoder` CLIP-L and `text_encoder_2` CLIP-G, both with projection (their pooled
  vectors are concatenated), `text_encoder_3` T5-XXL or None (its states are then zeros).
transformers 5's CLIPTextModel has no `.text_model` level; CLIPTextModelWithProjection does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from webui_api.engine.loading import load_clip_tokenizer

EMBEDDED_MODEL_NAME = "embedded-tiny-sd1-random"
EMBEDDED_FILENAME = "<embedded>"
EMBEDDED_WEIGHT_SEED = 20240101  # any fixed value; changing it changes the embedded model's hash
SD1_VAE_SCALE = 0.18215


@dataclass(frozen=True)
class CheckpointInfo:
    """One /sdapi/v1/sd-models entry, with A1111's field meanings.

    `hash` is the short sha256 (10 hex digits) and, like `sha256`, is None until the file has
    been hashed (on first load, or earlier when cache.json knows it); the title then gains its
    " [hash]" suffix. `legacy_hash` is A1111's old 8-hex model hash, still a valid alias.
    """

    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None
    legacy_hash: str | None = None

    @classmethod
    def for_file(
        cls, name: str, filename: str, sha256: str | None, legacy_hash: str | None = None, config: str | None = None
    ) -> CheckpointInfo:
        """A1111's entry for a file whose relative name is `name` ("sub/model.safetensors")."""
        short = sha256[:10] if sha256 else None
        return cls(
            title=f"{name} [{short}]" if short else name,
            model_name=os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0],
            hash=short,
            sha256=sha256,
            filename=filename,
            config=config,
            legacy_hash=legacy_hash,
        )

    def with_sha256(self, sha256: str) -> CheckpointInfo:
        """This entry once the file is hashed: hash, sha256 and the title's suffix filled in."""
        return replace(self, title=f"{self.name} [{sha256[:10]}]", hash=sha256[:10], sha256=sha256)

    @property
    def name(self) -> str:
        """The title without its " [hash]" suffix (A1111's relative checkpoint name)."""
        suffix = f" [{self.hash}]"
        return self.title[: -len(suffix)] if self.hash and self.title.endswith(suffix) else self.title

    def api_item(self) -> dict[str, Any]:
        """The /sdapi/v1/sd-models item, exactly A1111's six fields."""
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.hash,
            "sha256": self.sha256,
            "filename": self.filename,
            "config": self.config,
        }

    def aliases(self) -> tuple[str, ...]:
        """Every string A1111 accepts for this checkpoint (its `ids`), without duplicates."""
        base = os.path.basename(self.filename)
        stem = os.path.splitext(base)[0]
        names = [self.title, self.model_name, self.name, base, stem]
        if self.legacy_hash:
            names += [self.legacy_hash, f"{self.name} [{self.legacy_hash}]"]
        if self.hash:
            names += [self.hash, f"{self.name} [{self.hash}]", f"{stem} [{self.hash}]"]
        if self.sha256:
            names.append(self.sha256)
        return tuple(dict.fromkeys(n for n in names if n))


@dataclass
class LoadedModel:
    """The components one generation needs, already on `device` in `dtype`.

    `alphas_cumprod` stays float32 whatever `dtype` is: A1111 keeps it out of the fp16
    conversion, and the sigma table (hence every schedule) is computed from it.
    """

    info: CheckpointInfo
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    alphas_cumprod: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    latent_channels: int = 4
    vae_scale_factor: float = SD1_VAE_SCALE
    family: str = "sd1"  # "sd1" | "sd2" | "sdxl" | "sdxl-refiner"
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" (SD2-768-v, v-pred SDXL)
    text_encoder_2: Any = None  # SDXL's OpenCLIP-G (transformers CLIPTextModelWithProjection)
    tokenizer_2: Any = None  # its tokenizer (pads with 0 after the first EOS)
    text_encoder_3: Any = None  # SD3's optional T5-XXL (transformers T5EncoderModel); None: T5 left out
    tokenizer_3: Any = None  # its tokenizer
    unet_in_channels: int = 4  # 9 for inpainting UNets (latent + mask + masked-image latent)
    architecture: str = "sd1"  # the detected variant: "sd1", "sd1-inpaint", "sd2-v", "sdxl", ...
    baked_vae: Any = None  # the checkpoint's own VAE; `vae` is it or a VAE file chosen by sd_vae
    vae_file: str | None = None  # the VAE file `vae` came from; None while the baked VAE is in use
    embeddings: Any = None  # webui_api.engine.embeddings.EmbeddingStore fitting this model's encoders
    autocast: bool = False  # UNet calls run under torch.autocast (engine.precision.PrecisionPolicy.autocast)
    preview_decoders: Any = None  # engine.previews.PreviewDecoders: TAESD / Approx NN decoders for live previews
    vae_tiling: str = "auto"  # --vae-tiling: auto | on | off (engine.vae_tiling)
    offloaded: bool = False  # its networks take turns on the device (--medvram/--lowvram; engine.offload)
    text_encoder_parking: Any = None  # engine.text_encoder_offload.TextEncoderParking (flow families); None: kept
    vae_shift_factor: float = 0.0  # latent = (z - shift) * scale; Flux's autoencoder has a shift, SD's none
    flow_shift: float | None = None  # flow-matching models (Flux): the sigma table's time shift; None: diffusion
    module_files: tuple[str, ...] = ()  # Forge modules (VAE / text encoder files) this model was built with
    unet_storage: Any = None  # float8 dtype the transformer's Linear weights are stored in (upcast per layer)
    zero_terminal_snr: bool = False  # trained with zero terminal SNR (a `ztsnr` marker in the file)

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every network the model holds (the baked VAE too, while another VAE is active)."""
        parts = {
            "unet": self.unet,
            "vae": self.vae,
            "baked_vae": self.baked_vae,
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
            "text_encoder_3": self.text_encoder_3,
        }
        return {name: module for name, module in parts.items() if module is not None}

    def move_to(
        self, device: torch.device, mover: Callable[[torch.nn.Module, torch.device], None] | None = None
    ) -> None:
        """Move every network and the schedule to `device` (parking a cached model in CPU RAM
        and bringing it back costs a copy, not a disk read); `mover` moves one network (the
        device policy's pinned, non-blocking TransferPlan.move), plain `.to` by default."""
        for module in self.modules().values():
            if mover is None:
                module.to(device)
            else:
                mover(module, device)
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        self.device = torch.device(device)


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000
) -> torch.Tensor:
    """SD1/SD2's ᾱ: betas linear in sqrt-space, cumulative product in float64, stored float32.

    Computing in float64 first is what makes sigma_min/sigma_max come out as A1111's
    0.029167533 / 14.614642.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


# ---------------------------------------------------------------------------
# The embedded tiny model
# ---------------------------------------------------------------------------


@dataclass
class _TinyComponents:
    unet: Any
    vae: Any
    text_encoder: Any

    def named_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}


def _tiny_unet() -> Any:
    """SD1 UNet layout in miniature. Cross-attention sits only at the lowest of three levels
    so a 64x64 latent (512x512 image) costs ~60 ms per CFG call on one CPU thread."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _tiny_vae() -> Any:
    """An AutoencoderKL with SD1's 8x downscale (4 levels) and 4 latent channels, tiny widths."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=SD1_VAE_SCALE,
    )


def _tiny_text_encoder() -> Any:
    """CLIP text transformer with the real vocabulary and 77 positions, but 32 wide and 2 deep."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def _fill_deterministic(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter from `generator`, in name order, so the weights depend only on
    the seed and the architecture, not on the libraries' own init schemes or the global RNG.

    Matrices/kernels get N(0, 1/fan_in) (activations keep unit scale through the random net),
    1-D weights (norm scales) get 1, biases N(0, 0.1^2) (non-zero, so a LayerNorm output does
    not have an exactly zero mean, unlike any trained CLIP).
    """
    params = dict(module.named_parameters())
    for name in sorted(params):
        param = params[name]
        if param.ndim >= 2:
            fan_in = param[0].numel()
            values = torch.randn(param.shape, generator=generator, dtype=torch.float32) / fan_in**0.5
            param.copy_(values)
        elif name.endswith("bias"):
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32) * 0.1)
        else:
            param.fill_(1.0)


def _build_tiny_components() -> _TinyComponents:
    """Build the three networks on CPU in float32 with deterministic weights.

    Construction runs under a forked RNG so the caller's global torch RNG state is untouched.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        parts = _TinyComponents(unet=_tiny_unet(), vae=_tiny_vae(), text_encoder=_tiny_text_encoder())
        generator = torch.Generator(device="cpu").manual_seed(EMBEDDED_WEIGHT_SEED)
        for module in parts.named_modules().values():
            _fill_deterministic(module, generator)
            module.eval().requires_grad_(False)
    return parts


def _weights_sha256(parts: _TinyComponents) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for prefix, module in parts.named_modules().items():
        state = module.state_dict()
        for key in sorted(state):
            tensor = state[key].detach().cpu().contiguous()
            digest.update(f"{prefix}.{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _embedded_info_from_sha256(sha256: str) -> CheckpointInfo:
    short = sha256[:10]
    return CheckpointInfo(
        title=f"{EMBEDDED_MODEL_NAME} (random weights, images are noise) [{short}]",
        model_name=EMBEDDED_MODEL_NAME,
        hash=short,
        sha256=sha256,
        filename=EMBEDDED_FILENAME,
        config=None,
    )


def embedded_checkpoint_info() -> CheckpointInfo:
    """The embedded model's sd-models entry; its hash is computed from the generated weights,
    so it proves the weights are the same across runs and processes."""
    return _embedded_info_from_sha256(_weights_sha256(_build_tiny_components()))


def cast_floating(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point parameters/buffers only (CLIP's integer position ids must stay int64).

    Uses nn.Module's half()/bfloat16()/float() rather than `.to(dtype)`, which diffusers
    answers with a misleading "modules that should be kept in float32: []" warning.
    """
    casts = {torch.float16: module.half, torch.bfloat16: module.bfloat16, torch.float32: module.float}
    if dtype not in casts:
        raise ValueError(f"model dtype must be one of float16, bfloat16, float32; got {dtype}")
    casts[dtype]()


def build_embedded_model(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Build the embedded tiny SD1 model (deterministic random weights) on `device` in `dtype`."""
    target = torch.device(device)
    parts = _build_tiny_components()
    info = _embedded_info_from_sha256(_weights_sha256(parts))
    for module in parts.named_modules().values():
        cast_floating(module.to(device=target), dtype)
    return LoadedModel(
        info=info,
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=load_clip_tokenizer(),
        alphas_cumprod=scaled_linear_alphas_cumprod().to(target),
        device=target,
        dtype=dtype,
        baked_vae=parts.vae,
    )

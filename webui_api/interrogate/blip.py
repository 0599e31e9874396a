"""BLIP captioning as A1111's interrogator runs it, on transformers' BLIP classes.

A1111 loads `models/BLIP/model_base_caption_capfilt_large.pth` into the BLIP repository's
`blip_decoder(image_size=384, vit='base')` and calls `generate(image, sample=False,
num_beams, min_length, max_length)`: beam search after the prompt "a picture of ", with the
prompt cut off the decoded text. transformers' `BlipForConditionalGeneration` is the same
network; `blip_key` renames the original file's keys to its names (the renames of
transformers' own BLIP conversion), and the text side keeps BLIP's BERT names.

Sizes (width, depth, vocabulary) are read from the file, so the tests' small files in the
original layout load through the same code as the real one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..engine.loading.files import UnusableModelFile
from .weights import read_torch_pickle

IMAGE_SIZE = 384  # A1111's blip_image_eval_size
PROMPT = "a picture of "
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # BLIP normalizes with CLIP's statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64  # BLIP's ViT and BERT use 64-wide attention heads (768 / 12)
VISION_LAYER_NORM_EPS = 1e-6  # BLIP's ViT (timm) LayerNorm epsilon
TEXT_LAYER_NORM_EPS = 1e-12  # BLIP's med_config.json
DEC_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"  # BLIP's added special tokens (ids 30522, 30523)

_VISION_RENAMES = (
    (r"^visual_encoder\.", "vision_model.encoder."),
    (r"\.blocks\.", ".layers."),
    (r"\.attn\.", ".self_attn."),
    (r"\.norm1\.", ".layer_norm1."),
    (r"\.norm2\.", ".layer_norm2."),
    (r"^vision_model\.encoder\.norm\.", "vision_model.post_layernorm."),
    (r"^vision_model\.encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^vision_model\.encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^vision_model\.encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"\.self_attn\.proj\.", ".self_attn.projection."),
)


def blip_key(key: str) -> str | None:
    """transformers' name for one key of the original BLIP caption checkpoint (None: not used)."""
    if key.startswith("text_decoder."):
        return key
    if not key.startswith("visual_encoder."):
        return None
    for pattern, replacement in _VISION_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


@dataclass(frozen=True)
class BlipShape:
    """The sizes of one checkpoint, read from its tensors."""

    vision_width: int
    vision_layers: int
    vision_mlp: int
    patch_size: int
    positions: int
    text_width: int
    text_layers: int
    text_mlp: int
    vocab_size: int
    max_positions: int

    @classmethod
    def of(cls, path: Path, weights: dict[str, torch.Tensor]) -> BlipShape:
        try:
            patch = weights["visual_encoder.patch_embed.proj.weight"]
            return cls(
                vision_width=patch.shape[0],
                vision_layers=_count(weights, r"^visual_encoder\.blocks\.(\d+)\."),
                vision_mlp=weights["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
                patch_size=patch.shape[-1],
                positions=weights["visual_encoder.pos_embed"].shape[1],
                text_width=weights["text_decoder.bert.embeddings.word_embeddings.weight"].shape[1],
                text_layers=_count(weights, r"^text_decoder\.bert\.encoder\.layer\.(\d+)\."),
                text_mlp=weights["text_decoder.bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
                vocab_size=weights["text_decoder.bert.embeddings.word_embeddings.weight"].shape[0],
                max_positions=weights["text_decoder.bert.embeddings.position_embeddings.weight"].shape[0],
            )
        except KeyError as err:
            raise UnusableModelFile(path, f"missing {err.args[0]}: not a BLIP caption checkpoint") from err

    def config(self) -> Any:
        from transformers import BlipConfig

        grid = round((self.positions - 1) ** 0.5)
        vision = dict(hidden_size=self.vision_width, intermediate_size=self.vision_mlp,
                      num_hidden_layers=self.vision_layers, num_attention_heads=max(1, self.vision_width // HEAD_WIDTH),
                      image_size=grid * self.patch_size, patch_size=self.patch_size,
                      layer_norm_eps=VISION_LAYER_NORM_EPS, hidden_act="gelu")
        text = dict(vocab_size=self.vocab_size, hidden_size=self.text_width, encoder_hidden_size=self.vision_width,
                    intermediate_size=self.text_mlp, num_hidden_layers=self.text_layers,
                    num_attention_heads=max(1, self.text_width // HEAD_WIDTH),
                    max_position_embeddings=self.max_positions, layer_norm_eps=TEXT_LAYER_NORM_EPS,
                    hidden_act="gelu", bos_token_id=30522, sep_token_id=102, pad_token_id=0)
        return BlipConfig(vision_config=vision, text_config=text)


def _count(weights: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for key in weights if (m := re.match(pattern, key))}
    return max(found) + 1 if found else 0


def load_blip(path: Path) -> Any:
    """transformers' BlipForConditionalGeneration holding the original checkpoint's weights."""
    from transformers import BlipForConditionalGeneration

    raw = read_torch_pickle(path)
    weights = raw.get("model", raw)
    if not isinstance(weights, dict):
        raise UnusableModelFile(path, "no 'model' state dict: not a BLIP checkpoint")
    shape = BlipShape.of(path, weights)
    if shape.positions - 1 != (IMAGE_SIZE // shape.patch_size) ** 2:
        raise UnusableModelFile(path, f"position embedding for {shape.positions - 1} patches; A1111 captions at "
                                      f"{IMAGE_SIZE}x{IMAGE_SIZE}")
    model = BlipForConditionalGeneration(shape.config())
    _load_renamed(path, model, weights)
    return model.eval()


def _load_renamed(path: Path, model: torch.nn.Module, weights: dict[str, Any]) -> None:
    renamed = {new: value for key, value in weights.items()
               if isinstance(value, torch.Tensor) and (new := blip_key(key)) is not None}
    expected = model.state_dict()
    renamed = {key: value for key, value in renamed.items() if key in expected}
    bias = renamed.get("text_decoder.cls.predictions.bias")
    if bias is not None:  # BLIP ties the decoder's bias to this one
        renamed.setdefault("text_decoder.cls.predictions.decoder.bias", bias)
    missing = sorted(key for key in expected if key not in renamed)
    if missing:
        raise UnusableModelFile(path, f"{len(missing)} weights missing, e.g. {missing[:3]}: not a BLIP caption model")
    try:
        model.load_state_dict(renamed, strict=True)
    except RuntimeError as err:
        raise UnusableModelFile(path, f"weights do not fit BLIP's layout ({err})") from err


@lru_cache(maxsize=1)
def blip_tokenizer() -> Any:
    """bert-base-uncased's WordPiece vocabulary (shipped) plus BLIP's [DEC] and [ENC] tokens."""
    from transformers import BertTokenizer

    text = (resources.files(__package__) / "data" / "bert-base-uncased-vocab.txt").read_text(encoding="utf-8")
    vocab = {token: index for index, token in enumerate(text.split("\n")) if token}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
    return tokenizer


def blip_pixels(image: Image.Image) -> torch.Tensor:
    """A1111's BLIP transform: bicubic resize to 384x384, to [0, 1], CLIP normalization; 1x3xHxW."""
    resized = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return normalized_tensor(resized, CLIP_MEAN, CLIP_STD)


def normalized_tensor(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """torchvision's ToTensor + Normalize on an RGB PIL image, as a 1x3xHxW float32 tensor."""
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((array - mean_t) / std_t).unsqueeze(0)


@dataclass(frozen=True)
class CaptionSettings:
    """A1111's interrogate_clip_num_beams / _min_length / _max_length options."""

    num_beams: int = 1
    min_length: int = 24
    max_length: int = 48


def caption(model: Any, image: Image.Image, settings: CaptionSettings) -> str:
    """BLIP_Decoder.generate(sample=False): beam search after the prompt, prompt cut off."""
    tokenizer = blip_tokenizer()
    param = next(model.parameters())
    pixels = blip_pixels(image).to(param.device, param.dtype)
    prompt_ids = tokenizer([PROMPT], return_tensors="pt").input_ids.to(param.device)
    with torch.no_grad():
        output = model.generate(pixel_values=pixels, input_ids=prompt_ids, num_beams=settings.num_beams,
                                min_length=settings.min_length, max_length=settings.max_length,
                                repetition_penalty=1.0, do_sample=False)
    text = tokenizer.decode(output[0], skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return text[len(PROMPT):]

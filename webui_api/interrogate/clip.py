"""CLIP ViT-L/14 as A1111's interrogator uses it: OpenAI's `ViT-L-14.pt` in transformers' CLIPModel.

A1111 calls `clip.load("ViT-L/14", download_root=--clip-models-path)`. That file is OpenAI's
TorchScript archive (a plain state dict is accepted too, as `clip.load` does); `openai_clip_key`
maps its keys to transformers' CLIPModel (the renames of transformers' own CLIP conversion:
fused attention in-projections split into q/k/v, projections transposed). Image preprocessing is
the `clip` package's: bicubic resize of the short side to the input size, centre crop, CLIP's
normalization. Text is tokenized like `clip.tokenize(truncate=True)`: 77 tokens, padded with 0.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..engine.loading.files import UnusableModelFile
from .blip import CLIP_MEAN, CLIP_STD, normalized_tensor
from .weights import read_torch_pickle

HEAD_WIDTH = 64  # OpenAI CLIP: heads = width // 64
_LAYER = r"resblocks\.(\d+)\."


def read_openai_clip(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of OpenAI's CLIP file: TorchScript archive (as downloaded) or plain pickle."""
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        try:
            archive = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as err:
            raise UnusableModelFile(path, f"not a readable TorchScript CLIP model ({err})") from err
        return dict(archive.state_dict())
    raw = read_torch_pickle(path)
    return {key: value for key, value in raw.items() if isinstance(value, torch.Tensor)}


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


@dataclass(frozen=True)
class ClipShape:
    """The sizes of one OpenAI CLIP state dict (what `clip.model.build_model` reads)."""

    vision_width: int
    vision_layers: int
    patch_size: int
    image_size: int
    embed_dim: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int

    @classmethod
    def of(cls, path: Path, state: dict[str, torch.Tensor]) -> ClipShape:
        try:
            conv = state["visual.conv1.weight"]
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            return cls(
                vision_width=conv.shape[0],
                vision_layers=_count(state, r"^visual\.transformer\." + _LAYER),
                patch_size=conv.shape[-1],
                image_size=grid * conv.shape[-1],
                embed_dim=state["text_projection"].shape[1],
                context_length=state["positional_embedding"].shape[0],
                vocab_size=state["token_embedding.weight"].shape[0],
                text_width=state["ln_final.weight"].shape[0],
                text_layers=_count(state, r"^transformer\." + _LAYER),
            )
        except KeyError as err:
            raise UnusableModelFile(path, f"missing {err.args[0]}: not an OpenAI CLIP ViT model") from err

    def config(self) -> Any:
        from transformers import CLIPConfig

        text = dict(vocab_size=self.vocab_size, hidden_size=self.text_width, intermediate_size=4 * self.text_width,
                    num_hidden_layers=self.text_layers, num_attention_heads=max(1, self.text_width // HEAD_WIDTH),
                    max_position_embeddings=self.context_length, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                    projection_dim=self.embed_dim, bos_token_id=self.vocab_size - 2, eos_token_id=self.vocab_size - 1,
                    pad_token_id=0)
        vision = dict(hidden_size=self.vision_width, intermediate_size=4 * self.vision_width,
                      num_hidden_layers=self.vision_layers,
                      num_attention_heads=max(1, self.vision_width // HEAD_WIDTH), image_size=self.image_size,
                      patch_size=self.patch_size, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                      projection_dim=self.embed_dim)
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.embed_dim)


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for key in state if (m := re.match(pattern, key))}
    return max(found) + 1 if found else 0


_BLOCK_RENAMES = {
    "attn.out_proj.": "self_attn.out_proj.",
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}
_TOP_RENAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' attribute name
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}


def openai_clip_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP state dict -> transformers CLIPModel state dict."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif (m := re.match(r"^(visual\.)?transformer\." + _LAYER + "(.+)$", key)):
            out.update(_block_weights(m.group(1) is not None, int(m.group(2)), m.group(3), value))
    return out


def _block_weights(vision: bool, layer: int, rest: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    prefix = f"{'vision_model' if vision else 'text_model'}.encoder.layers.{layer}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        parts = zip("qkv", value.chunk(3, dim=0), strict=True)
        return {f"{prefix}self_attn.{name}_proj.{kind}": part.contiguous() for name, part in parts}
    for old, new in _BLOCK_RENAMES.items():
        if rest.startswith(old):
            return {prefix + new + rest[len(old):]: value}
    return {}


def load_clip(path: Path) -> Any:
    """transformers' CLIPModel holding OpenAI's ViT-L/14 weights (fp32 on the CPU)."""
    from transformers import CLIPModel

    state = read_openai_clip(path)
    shape = ClipShape.of(path, state)
    model = CLIPModel(shape.config())
    converted = {key: value.float() for key, value in openai_clip_to_transformers(state).items()}
    expected = model.state_dict()
    missing = sorted(key for key in expected if key not in converted and not key.endswith("position_ids"))
    if missing:
        raise UnusableModelFile(path, f"{len(missing)} weights missing, e.g. {missing[:3]}: not an OpenAI CLIP model")
    try:
        model.load_state_dict({k: v for k, v in converted.items() if k in expected}, strict=False)
    except RuntimeError as err:
        raise UnusableModelFile(path, f"weights do not fit CLIP's layout ({err})") from err
    return model.eval()


def clip_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """The `clip` package's preprocess: Resize(size, bicubic) of the short side, CenterCrop(size),
    RGB, ToTensor, Normalize; 1x3xHxW."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    resized = image.resize(new_size, Image.Resampling.BICUBIC)
    left = int(round((resized.width - size) / 2.0))
    top = int(round((resized.height - size) / 2.0))
    cropped = resized.crop((left, top, left + size, top + size)).convert("RGB")
    return normalized_tensor(cropped, CLIP_MEAN, CLIP_STD)


def image_features(model: Any, image: Image.Image) -> torch.Tensor:
    """Normalized image embedding(s), 1xD, in the model's dtype."""
    param = next(model.parameters())
    pixels = clip_pixels(image, model.config.vision_config.image_size).to(param.device, param.dtype)
    with torch.no_grad():
        features = _embeds(model.get_image_features(pixel_values=pixels))
    return features / features.norm(dim=-1, keepdim=True)


def text_features(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Normalized text embeddings of `texts` (clip.tokenize: truncate to 77, pad with 0)."""
    param = next(model.parameters())
    context = model.config.text_config.max_position_embeddings
    ids = tokenizer(texts, padding="max_length", max_length=context, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        features = _embeds(model.get_text_features(input_ids=ids.to(param.device))).to(param.dtype)
    return features / features.norm(dim=-1, keepdim=True)


def _embeds(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor in older transformers, an output object in newer ones."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


def rank(image: torch.Tensor, texts: torch.Tensor, labels: list[str], top_count: int) -> list[tuple[str, float]]:
    """A1111's InterrogateModels.rank: softmax of 100x cosine similarity, mean over image rows,
    the top `top_count` labels with their percentage."""
    similarity = torch.zeros((1, len(labels)), device=image.device)
    for row in range(image.shape[0]):
        similarity += (100.0 * image[row].unsqueeze(0) @ texts.T).softmax(dim=-1).float()
    similarity /= image.shape[0]
    top_probs, top_labels = similarity.cpu().topk(min(top_count, len(labels)), dim=-1)
    return [(labels[int(top_labels[0][i])], float(top_probs[0][i]) * 100) for i in range(top_labels.shape[1])]

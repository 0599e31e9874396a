"""Random-weight interrogate models written in A1111's file layouts (tests build them; nothing is downloaded).

The key names are written out here from the original projects' layouts (BLIP's blip_decoder,
OpenAI's CLIP, A1111's deepbooru_model), not taken from our loaders, so a loader that renames
a key wrongly fails to load these files.
"""

from __future__ import annotations

from pathlib import Path

import torch

BLIP_VOCAB = 30524


def _rand(*shape: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(*shape) * scale


def _linear(sd: dict, name: str, out_f: int, in_f: int) -> None:
    sd[f"{name}.weight"] = _rand(out_f, in_f)
    sd[f"{name}.bias"] = _rand(out_f, scale=0.01)


def _norm(sd: dict, name: str, width: int) -> None:
    sd[f"{name}.weight"] = 1 + _rand(width, scale=0.01)
    sd[f"{name}.bias"] = _rand(width, scale=0.01)


def blip_state_dict(width: int = 64, layers: int = 1, mlp: int = 128, patch: int = 16, image: int = 384,
                    text_layers: int = 1, max_positions: int = 512) -> dict[str, torch.Tensor]:
    """BLIP_Decoder(vit='base')'s keys: visual_encoder.* (timm ViT) and text_decoder.* (BLIP's med.py BERT)."""
    sd: dict[str, torch.Tensor] = {}
    sd["visual_encoder.cls_token"] = _rand(1, 1, width)
    sd["visual_encoder.pos_embed"] = _rand(1, (image // patch) ** 2 + 1, width)
    sd["visual_encoder.patch_embed.proj.weight"] = _rand(width, 3, patch, patch)
    sd["visual_encoder.patch_embed.proj.bias"] = _rand(width)
    for i in range(layers):
        block = f"visual_encoder.blocks.{i}"
        _norm(sd, f"{block}.norm1", width)
        _linear(sd, f"{block}.attn.qkv", 3 * width, width)
        _linear(sd, f"{block}.attn.proj", width, width)
        _norm(sd, f"{block}.norm2", width)
        _linear(sd, f"{block}.mlp.fc1", mlp, width)
        _linear(sd, f"{block}.mlp.fc2", width, mlp)
    _norm(sd, "visual_encoder.norm", width)
    bert = "text_decoder.bert"
    sd[f"{bert}.embeddings.word_embeddings.weight"] = _rand(BLIP_VOCAB, width)
    sd[f"{bert}.embeddings.position_embeddings.weight"] = _rand(max_positions, width)
    sd[f"{bert}.embeddings.position_ids"] = torch.arange(max_positions).unsqueeze(0)
    _norm(sd, f"{bert}.embeddings.LayerNorm", width)
    for i in range(text_layers):
        layer = f"{bert}.encoder.layer.{i}"
        for attention in ("attention", "crossattention"):
            for proj in ("query", "key", "value"):
                _linear(sd, f"{layer}.{attention}.self.{proj}", width, width)
            _linear(sd, f"{layer}.{attention}.output.dense", width, width)
            _norm(sd, f"{layer}.{attention}.output.LayerNorm", width)
        _linear(sd, f"{layer}.intermediate.dense", mlp, width)
        _linear(sd, f"{layer}.output.dense", width, mlp)
        _norm(sd, f"{layer}.output.LayerNorm", width)
    _linear(sd, "text_decoder.cls.predictions.transform.dense", width, width)
    _norm(sd, "text_decoder.cls.predictions.transform.LayerNorm", width)
    sd["text_decoder.cls.predictions.decoder.weight"] = sd[f"{bert}.embeddings.word_embeddings.weight"].clone()
    sd["text_decoder.cls.predictions.bias"] = _rand(BLIP_VOCAB, scale=0.01)
    return sd


def write_blip(folder: Path, name: str = "model_base_caption_capfilt_large.pth", **sizes: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save({"model": blip_state_dict(**sizes)}, path)
    return path


def clip_state_dict(width: int = 64, layers: int = 1, text_width: int = 64, text_layers: int = 1, embed: int = 32,
                    patch: int = 32, image: int = 224, vocab: int = 49408,
                    context: int = 77) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (clip/model.py) keys, as `clip.load` reads them from ViT-L-14.pt."""
    sd: dict[str, torch.Tensor] = {
        "positional_embedding": _rand(context, text_width),
        "text_projection": _rand(text_width, embed),
        "logit_scale": torch.tensor(4.6052),
        "token_embedding.weight": _rand(vocab, text_width),
        "visual.class_embedding": _rand(width),
        "visual.positional_embedding": _rand((image // patch) ** 2 + 1, width),
        "visual.proj": _rand(width, embed),
        "visual.conv1.weight": _rand(width, 3, patch, patch),
    }
    _norm(sd, "visual.ln_pre", width)
    _norm(sd, "visual.ln_post", width)
    _norm(sd, "ln_final", text_width)
    for prefix, w, count in (("visual.transformer", width, layers), ("transformer", text_width, text_layers)):
        for i in range(count):
            block = f"{prefix}.resblocks.{i}"
            sd[f"{block}.attn.in_proj_weight"] = _rand(3 * w, w)
            sd[f"{block}.attn.in_proj_bias"] = _rand(3 * w, scale=0.01)
            _linear(sd, f"{block}.attn.out_proj", w, w)
            _norm(sd, f"{block}.ln_1", w)
            _linear(sd, f"{block}.mlp.c_fc", 4 * w, w)
            _linear(sd, f"{block}.mlp.c_proj", w, 4 * w)
            _norm(sd, f"{block}.ln_2", w)
    return sd


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _nested_module(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module tree whose state_dict() has exactly `state`'s keys (to script like OpenAI's archive)."""
    root = _Holder()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node: torch.nn.Module = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, _Holder())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
    return root


def write_clip(folder: Path, torchscript: bool = False, **sizes: int) -> Path:
    """`ViT-L-14.pt`: a TorchScript archive like OpenAI's download, or a plain state dict (clip.load takes both)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ViT-L-14.pt"
    state = clip_state_dict(**sizes)
    if torchscript:
        torch.jit.save(torch.jit.script(_nested_module(state)), str(path))
    else:
        torch.save(state, path)
    return path


# A1111's deepbooru_model: (in, out, kernel, stride) per n_Conv index, stage by stage.
def deepdanbooru_conv_specs(base: int = 64, tags: int = 9176) -> dict[int, tuple[int, int, int]]:
    """Conv index -> (in_channels, out_channels, kernel) with A1111's widths scaled by base/64."""
    specs: dict[int, tuple[int, int, int]] = {0: (3, base, 7)}
    index = 1
    in_ch = base
    # (mid width, out width, blocks, projection numbered after the block's three convs)
    stages = [(base, 4 * base, 3, False), (2 * base, 8 * base, 8, False), (4 * base, 16 * base, 20, False),
              (4 * base, 16 * base, 20, True), (8 * base, 32 * base, 3, False), (16 * base, 64 * base, 3, False)]
    for mid, out, blocks, projection_last in stages:
        for block in range(blocks):
            first_in = in_ch
            if block == 0 and not projection_last:
                specs[index] = (first_in, out, 1)
                index += 1
            specs[index] = (first_in, mid, 1)
            specs[index + 1] = (mid, mid, 3)
            specs[index + 2] = (mid, out, 1)
            index += 3
            if block == 0 and projection_last:
                specs[index] = (first_in, out, 1)
                index += 1
            in_ch = out
    specs[index] = (in_ch, tags, 1)
    return specs


def deepdanbooru_state_dict(tags: list[str], base: int = 2) -> dict:
    specs = deepdanbooru_conv_specs(base, len(tags))
    assert len(specs) == 179
    sd: dict = {}
    for index, (in_ch, out_ch, kernel) in specs.items():
        # fan-in scaled so 50 residual blocks neither blow up nor die: probabilities spread around 0.5
        sd[f"n_Conv_{index}.weight"] = torch.randn(out_ch, in_ch, kernel, kernel) * 0.8 / (in_ch * kernel**2) ** 0.5
        if index != 178:
            sd[f"n_Conv_{index}.bias"] = _rand(out_ch, scale=0.05)
    sd["tags"] = list(tags)
    return sd


def write_deepdanbooru(folder: Path, tags: list[str], base: int = 2, name: str = "model-resnet_custom_v3.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save(deepdanbooru_state_dict(tags, base), path)
    return path

"""Full-size random-weight interrogate models in A1111's layouts (slow: about 2 GB of weights).

They check that the real files' shapes (BLIP ViT-B/16 at 384 + BERT-base decoder, OpenAI's
ViT-L/14 TorchScript archive, the 9176-tag DeepDanbooru ResNet) load and run end to end.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from .tiny_models import (
    deepdanbooru_conv_specs,
    write_blip,
    write_clip,
    write_deepdanbooru,
)

pytestmark = pytest.mark.slow


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_full_size_deepdanbooru(client_with_clip_dir, tmp_path):
    tags = [f"tag_{i}" for i in range(9175)] + ["rating:safe"]
    path = write_deepdanbooru(tmp_path / "models" / "torch_deepdanbooru", tags, base=64)
    from webui_api.interrogate.deepdanbooru import load_deepdanbooru

    model = load_deepdanbooru(path)
    specs = deepdanbooru_conv_specs(64, len(tags))
    assert all(tuple(model.conv(i).weight.shape) == (o, c, k, k) for i, (c, o, k) in specs.items())
    client = client_with_clip_dir(tmp_path / "models", tmp_path / "clip")
    client.post("/sdapi/v1/options", json={"interrogate_deepbooru_score_threshold": 0.0})
    caption = client.post("/sdapi/v1/interrogate", json={"image": _png_b64(), "model": "deepdanbooru"}).json()
    assert len(caption["caption"].split(", ")) == 9175  # every tag but rating:*


def test_full_size_blip_and_clip(client_with_clip_dir, tmp_path):
    write_blip(tmp_path / "models" / "BLIP", width=768, layers=12, mlp=3072, text_layers=12)
    write_clip(tmp_path / "clip", torchscript=True, width=1024, layers=24, patch=14, image=224,
               text_width=768, text_layers=12, embed=768)
    (tmp_path / "interrogate").mkdir()
    (tmp_path / "interrogate" / "mediums.txt").write_text("a painting\na photo\na sketch\n", encoding="utf8")
    client = client_with_clip_dir(tmp_path / "models", tmp_path / "clip")
    client.post("/sdapi/v1/options", json={"interrogate_clip_min_length": 8, "interrogate_clip_max_length": 12,
                                           "interrogate_clip_num_beams": 2})
    response = client.post("/sdapi/v1/interrogate", json={"image": _png_b64(), "model": "clip"})
    assert response.status_code == 200, response.text
    head, medium = response.json()["caption"].rsplit(", ", 1)
    assert head.strip() and medium in {"a painting", "a photo", "a sketch"}

"""POST /sdapi/v1/interrogate as clients send it, on tiny random-weight models in A1111's layouts."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from .conftest import TAGS


def png_b64(color=(200, 40, 90), size=(96, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_deepdanbooru_tags_with_a1111_defaults(interrogate_client):
    interrogate_client.post("/sdapi/v1/options", json={"interrogate_deepbooru_score_threshold": 0.0})
    response = interrogate_client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": "deepdanbooru"})
    assert response.status_code == 200, response.text
    # threshold 0 keeps every tag but rating:*, alphabetical, spaces, brackets escaped
    assert response.json() == {"caption": "blue sky, cat, dog \\(animal\\), long hair"}


def test_deepdanbooru_options_ranks_filter_underscores(interrogate_client):
    interrogate_client.post("/sdapi/v1/options", json={
        "interrogate_deepbooru_score_threshold": 0.0, "deepbooru_use_spaces": False, "deepbooru_escape": False,
        "deepbooru_filter_tags": "cat, long hair", "interrogate_return_ranks": True})
    caption = interrogate_client.post("/sdapi/v1/interrogate",
                                      json={"image": png_b64(), "model": "deepdanbooru"}).json()["caption"]
    parts = caption.split(", ")
    assert [part.rsplit(":", 1)[0] for part in parts] == ["(blue_sky", "(dog_(animal)"]
    assert all(part.endswith(")") and len(part.rsplit(":", 1)[1]) == len("0.123)") for part in parts)


def _probabilities(models_root) -> dict[str, float]:
    """The tiny tagger's scores for png_b64()'s image, computed directly (A1111: resize-and-fill to 512)."""
    import numpy as np
    import torch

    from webui_api.engine.image_prep import TargetSize, resize_image
    from webui_api.interrogate.deepdanbooru import load_deepdanbooru

    model = load_deepdanbooru(models_root / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
    image = Image.open(io.BytesIO(base64.b64decode(png_b64()))).convert("RGB")
    picture = np.array(resize_image(2, image, TargetSize(512, 512)), dtype=np.float32)[None] / 255
    with torch.no_grad():
        return dict(zip(model.tags, model(torch.from_numpy(picture))[0].tolist(), strict=True))


def test_deepdanbooru_default_threshold_sorted_by_score(interrogate_client, interrogate_models):
    scores = _probabilities(interrogate_models)
    assert 0.05 < min(scores.values()) and max(scores.values()) < 0.95  # the tiny model is not saturated
    interrogate_client.post("/sdapi/v1/options", json={"deepbooru_sort_alpha": False})
    caption = interrogate_client.post("/sdapi/v1/interrogate",
                                      json={"image": png_b64(), "model": "deepdanbooru"}).json()["caption"]
    kept = sorted((tag for tag, p in scores.items() if p >= 0.5 and not tag.startswith("rating:")),
                  key=lambda tag: -scores[tag])
    expected = ", ".join(tag.replace("_", " ").replace("(", "\\(").replace(")", "\\)") for tag in kept)
    assert caption == expected
    interrogate_client.post("/sdapi/v1/options", json={"interrogate_deepbooru_score_threshold": 1.0})
    response = interrogate_client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": "deepdanbooru"})
    assert response.json() == {"caption": ""}


def test_clip_caption_then_ranked_categories(interrogate_client):
    interrogate_client.post("/sdapi/v1/options", json={"interrogate_clip_min_length": 6,
                                                       "interrogate_clip_max_length": 8})
    response = interrogate_client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": "clip"})
    assert response.status_code == 200, response.text
    caption = response.json()["caption"]
    head, *matches = caption.split(", ")
    assert head.strip()  # the BLIP caption (random weights: random words)
    # colors.top2 then mediums (file name order): two colours, one medium
    assert len(matches) == 3
    assert set(matches[:2]) <= {"red", "green", "blue"} and matches[0] != matches[1]
    assert matches[2] in {"a painting", "a photo", "a sketch"}


def test_clip_ranks_and_skipped_categories(interrogate_client):
    interrogate_client.post("/sdapi/v1/options", json={
        "interrogate_clip_min_length": 5, "interrogate_clip_max_length": 6, "interrogate_return_ranks": True,
        "interrogate_clip_skip_categories": ["mediums"]})
    caption = interrogate_client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": "clip"}).json()
    matches = caption["caption"].split(", ")[1:]
    assert len(matches) == 2
    for match in matches:
        label, score = match[1:-1].rsplit(":", 1)
        assert label in {"red", "green", "blue"} and 0 <= float(score) <= 1 and len(score) == 5


def test_aiyabot_shape_data_url(interrogate_client):
    """aiyabot's /identify: the upload as a data URL, model by name."""
    interrogate_client.post("/sdapi/v1/options", json={"interrogate_deepbooru_score_threshold": 0.0})
    payload = {"image": "data:image/png;base64," + png_b64(), "model": "deepdanbooru"}
    response = interrogate_client.post("/sdapi/v1/interrogate", json=payload)
    assert response.status_code == 200 and response.json()["caption"].startswith("blue sky")


@pytest.mark.parametrize(("payload", "status", "detail"), [
    ({"image": None, "model": "clip"}, 404, "Image not found"),
    ({"model": "wd14"}, 404, "Model not found"),
    ({"image": "not base64!", "model": "clip"}, 400, "Invalid encoded image"),
])
def test_a1111_errors(interrogate_client, payload, status, detail):
    if "image" not in payload:
        payload = {**payload, "image": png_b64()}
    response = interrogate_client.post("/sdapi/v1/interrogate", json=payload)
    assert response.status_code == status
    assert response.json()["detail"] == detail


@pytest.mark.parametrize(("model", "file_name", "folder"), [
    ("deepdanbooru", "model-resnet_custom_v3.pt", "torch_deepdanbooru"),
    ("clip", "model_base_caption_capfilt_large.pth", "BLIP"),
])
def test_missing_weights_are_a_400_naming_file_and_folder(client, tmp_path, model, file_name, folder):
    response = client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": model})
    assert response.status_code == 400
    body = response.json()
    assert file_name in body["detail"] and str(tmp_path / "models" / folder) in body["detail"]
    assert set(body) == {"error", "detail", "body", "errors"}


def test_missing_clip_file_names_clip_folder(client_with_clip_dir, interrogate_models, tmp_path):
    client = client_with_clip_dir(interrogate_models / "models", tmp_path / "no-clip")
    response = client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": "clip"})
    assert response.status_code == 400
    assert "ViT-L-14.pt" in response.json()["detail"] and str(tmp_path / "no-clip") in response.json()["detail"]


def test_tags_listed_in_model_order_match_the_file(interrogate_models):
    from webui_api.interrogate.deepdanbooru import load_deepdanbooru

    model = load_deepdanbooru(interrogate_models / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
    assert model.tags == TAGS


def test_offline_missing_weights_name_the_fetch_command(client, tmp_path):
    response = client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": "deepdanbooru"})
    assert response.status_code == 400
    assert 'webui-api models fetch "deepdanbooru"' in response.json()["detail"]
    assert not (tmp_path / "models" / "torch_deepdanbooru").exists()


def test_missing_tagger_is_fetched_from_the_mirror_on_first_use(client, tmp_path, interrogate_models):
    """A1111 downloads model-resnet_custom_v3.pt on first use; here from a loopback mirror,
    sha256-checked, into models/torch_deepdanbooru, before the job is queued."""
    from tests.weights.mirror import MirrorState, serve_mirror
    from tests.weights.tiny_files import origin_path, pinned_to
    from webui_api.weights import (
        FetchPolicy,
        WeightFolders,
        WeightsFetcher,
        WeightsRegistry,
    )

    data = (interrogate_models / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt").read_bytes()
    registry, entry = pinned_to(WeightsRegistry.builtin(), "deepdanbooru", data)
    state = MirrorState(files={origin_path(entry): data})
    runtime = client.app.state.runtime
    with serve_mirror(state) as mirror:
        runtime.weights = WeightsFetcher(registry, WeightFolders.from_settings(runtime.settings),
                                          FetchPolicy(offline=False, mirror=mirror))
        first = client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": "deepdanbooru"})
        second = client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": "deepdanbooru"})
    assert first.status_code == 200, first.text
    assert second.json() == first.json()
    assert (tmp_path / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt").read_bytes() == data
    assert len(state.requests) == 1

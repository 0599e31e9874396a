"""A1111's model folders, names and hashes: what /sdapi/v1/sd-models and sd-vae list."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.factories import settings_for_tests
from webui_api.engine.loading.discovery import (
    ModelPaths,
    checkpoint_files,
    embedding_files,
    natural_sort_key,
    network_files,
    scan_checkpoints,
    scan_vaes,
)
from webui_api.engine.loading.hashes import ADDNET_SECTION, HashCache, addnet_hash, legacy_model_hash, sha256_of_file
from webui_api.engine.models import CheckpointInfo


def _file(path: Path, size: int = 64, byte: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([byte]) * size)
    return path


@pytest.fixture()
def layout(tmp_path):
    """An A1111 data folder with checkpoints (one in a subfolder), VAEs, LoRAs, embeddings."""
    settings = settings_for_tests(tmp_path)
    sd = tmp_path / "models" / "Stable-diffusion"
    for name in ("model10.safetensors", "model2.ckpt", "sub/Anime.safetensors", "notes.txt", ".hidden/x.safetensors"):
        _file(sd / name)
    _file(sd / "model2.vae.safetensors")
    _file(sd / "model2.yaml")
    _file(tmp_path / "models" / "VAE" / "vae-ft-mse.safetensors")
    _file(tmp_path / "models" / "Lora" / "style.safetensors")
    _file(tmp_path / "models" / "LyCORIS" / "locon.safetensors")
    _file(tmp_path / "embeddings" / "bad-hands.pt")
    (tmp_path / "embeddings" / "empty.pt").write_bytes(b"")
    return ModelPaths.from_settings(settings)


def test_natural_sort_is_a1111s():
    names = ["model10", "Model2", "model1", "a"]
    assert sorted(names, key=natural_sort_key) == ["a", "model1", "Model2", "model10"]


def test_checkpoint_scan_order_names_and_exclusions(layout):
    files = checkpoint_files(layout)
    root = layout.ckpt_dirs[0]
    assert files == [root / "model2.ckpt", root / "model10.safetensors", root / "sub" / "Anime.safetensors"]


def test_items_before_hashing_are_a1111s(layout):
    infos = scan_checkpoints(layout, HashCache(None))
    root = layout.ckpt_dirs[0]
    assert [i.api_item() for i in infos][2] == {
        "title": "sub/Anime.safetensors",
        "model_name": "sub_Anime",
        "hash": None,
        "sha256": None,
        "filename": str(root / "sub" / "Anime.safetensors"),
        "config": None,
    }
    assert infos[0].config == str(root / "model2.yaml")


def test_ckpt_flag_and_extra_ckpt_dir(tmp_path, layout):
    extra = tmp_path / "elsewhere"
    outside = _file(tmp_path / "single" / "chosen.safetensors")
    _file(extra / "deep" / "e.safetensors")
    paths = ModelPaths(ckpt_dirs=(extra,) + layout.ckpt_dirs, ckpt_file=outside)
    infos = scan_checkpoints(paths, HashCache(None))
    assert [i.name for i in infos][:3] == ["chosen.safetensors", "deep/e.safetensors", "model2.ckpt"]


def test_hash_after_load_changes_the_title_and_aliases(layout):
    info = scan_checkpoints(layout, HashCache(None))[2]
    sha = hashlib.sha256(Path(info.filename).read_bytes()).hexdigest()
    hashed = info.with_sha256(sha)
    assert hashed.title == f"sub/Anime.safetensors [{sha[:10]}]" and hashed.hash == sha[:10]
    for alias in (
        "sub/Anime.safetensors",
        "sub_Anime",
        "Anime",
        sha[:10],
        sha,
        f"Anime [{sha[:10]}]",
        info.legacy_hash,
    ):
        assert alias in hashed.aliases()


def test_legacy_model_hash_reads_64k_at_one_mebibyte(tmp_path):
    data = bytes(range(256)) * (0x140000 // 256)
    path = tmp_path / "big.ckpt"
    path.write_bytes(data)
    assert legacy_model_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    small = _file(tmp_path / "small.ckpt", 10)
    assert legacy_model_hash(small) == hashlib.sha256(b"").hexdigest()[:8]  # A1111 hashes nothing, too


def test_hash_cache_json_is_a1111s_and_survives_restarts(tmp_path, layout):
    target = Path(scan_checkpoints(layout, HashCache(None))[1].filename)
    cache_file = tmp_path / "cache.json"
    first = HashCache(cache_file)
    value = first.sha256(target, "checkpoint/model10.safetensors")
    assert value == sha256_of_file(target)
    saved = json.loads(cache_file.read_text())
    assert saved["hashes"]["checkpoint/model10.safetensors"]["sha256"] == value
    assert HashCache(cache_file).cached(target, "checkpoint/model10.safetensors") == value
    titles = [i.title for i in scan_checkpoints(layout, HashCache(cache_file))]
    assert f"model10.safetensors [{value[:10]}]" in titles


def test_a_newer_file_invalidates_its_cached_hash(tmp_path, layout):
    target = Path(scan_checkpoints(layout, HashCache(None))[0].filename)
    cache = HashCache(tmp_path / "cache.json")
    old = cache.sha256(target, "checkpoint/model2.ckpt")
    target.write_bytes(b"changed")
    stamp = os.path.getmtime(target) + 10
    os.utime(target, (stamp, stamp))
    assert cache.cached(target, "checkpoint/model2.ckpt") is None
    assert cache.sha256(target, "checkpoint/model2.ckpt") == hashlib.sha256(b"changed").hexdigest() != old


def test_no_hashing_uses_the_cache_but_never_computes(tmp_path, layout):
    target = Path(scan_checkpoints(layout, HashCache(None))[0].filename)
    assert HashCache(tmp_path / "cache.json", enabled=False).sha256(target, "checkpoint/model2.ckpt") is None
    value = HashCache(tmp_path / "cache.json").sha256(target, "checkpoint/model2.ckpt")
    assert HashCache(tmp_path / "cache.json", enabled=False).sha256(target, "checkpoint/model2.ckpt") == value


def test_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, layout):
    target = Path(scan_checkpoints(layout, HashCache(None))[0].filename)
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("{ not json")
    assert HashCache(cache_file).sha256(target, "k") == sha256_of_file(target)
    assert "k" in json.loads(cache_file.read_text())["hashes"]


def test_addnet_hash_skips_the_safetensors_header(tmp_path):
    import safetensors.torch
    import torch

    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    tensors = {"w": torch.arange(6.0)}
    safetensors.torch.save_file(tensors, str(first), metadata={"ss_output_name": "a"})
    safetensors.torch.save_file(tensors, str(second), metadata={"ss_output_name": "something else"})
    assert addnet_hash(first) == addnet_hash(second) != sha256_of_file(first)
    assert HashCache(None).sha256(first, "lora/a", ADDNET_SECTION) == addnet_hash(first)


def test_vae_list_is_by_file_name_and_sorted(layout):
    vaes = scan_vaes(layout)
    assert [v.api_item()["model_name"] for v in vaes] == ["model2.vae.safetensors", "vae-ft-mse.safetensors"]
    assert all(Path(v.filename).is_file() for v in vaes)


def test_other_model_folders(layout):
    assert [p.name for p in network_files(layout)] == ["style.safetensors", "locon.safetensors"]
    assert [p.name for p in embedding_files(layout)] == ["bad-hands.pt"]


def test_info_for_a_file_outside_the_folders_is_named_by_its_basename():
    info = CheckpointInfo.for_file("x.safetensors", "/data/x.safetensors", "ab" * 32, "12345678")
    assert info.title == "x.safetensors [ababababab]" and info.model_name == "x"
    assert "12345678" in info.aliases() and "x.safetensors [12345678]" in info.aliases()

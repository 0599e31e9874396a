"""The bundled CLIP tokenizer: the full 49408-token vocabulary, loaded offline."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from webui_api.engine.loading import bundled_tokenizer_dir, load_clip_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def test_vocabulary_size_and_max_length(tokenizer):
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77


def test_special_tokens(tokenizer):
    assert tokenizer.bos_token_id == 49406
    assert tokenizer.eos_token_id == 49407
    assert tokenizer.pad_token_id == 49407


def test_known_encoding(tokenizer):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_lower_cases_and_marks_word_ends(tokenizer):
    assert tokenizer("A PHOTO").input_ids == tokenizer("a photo").input_ids
    assert tokenizer.get_vocab()[",</w>"] == 267


def test_files_ship_inside_the_package():
    files = sorted(p.name for p in bundled_tokenizer_dir().iterdir())
    assert files == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="needs open-clip-torch (tokenizer extra)")
def test_script_regenerates_the_bundled_files(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_clip_tokenizer.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    bundled = bundled_tokenizer_dir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (bundled / name).read_bytes(), name
    assert len(json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))) == 49408

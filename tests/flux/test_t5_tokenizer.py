"""The bundled T5 v1.1 tokenizer: found with no tokenizer in the models folder, gives the
published ids, agrees with its own SentencePiece model, and a models-folder one still wins."""

from __future__ import annotations

import random

import pytest

from tests.flux.files import write_t5_tokenizer
from webui_api.engine.loading import T5_V1_1_TOKENIZER, bundled_tokenizer_dir
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.loading.forge_modules import T5_TOKENIZER_FOLDER, load_t5_tokenizer

# Ids of the published T5 v1.1 tokenizer (the ones Flux's and SD3's pipelines use); T5 splits a
# lone "a" into "▁" (3) and "a" (9).
KNOWN_IDS = {
    "a photo of a cat": [3, 9, 1202, 13, 3, 9, 1712, 1],
    "Hello world!": [8774, 296, 55, 1],
    "A photo of a cat.": [71, 1202, 13, 3, 9, 1712, 5, 1],
}


@pytest.fixture(scope="module")
def bundled():
    return load_t5_tokenizer(ModelPaths())


def test_bundled_tokenizer_is_the_default_and_gives_the_published_ids(bundled):
    assert len(bundled) == 32100 and bundled.model_max_length == 512
    assert (bundled.pad_token_id, bundled.eos_token_id, bundled.unk_token_id) == (0, 1, 2)
    for text, ids in KNOWN_IDS.items():
        assert bundled(text).input_ids == ids, text
    assert bundled.convert_ids_to_tokens([1202, 1712, 32099]) == ["▁photo", "▁cat", "<extra_id_0>"]


def test_bundled_files_ship_with_their_notice():
    folder = bundled_tokenizer_dir(T5_V1_1_TOKENIZER, "tokenizer.json")
    names = {p.name for p in folder.iterdir()}
    assert {"tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json", "NOTICE"} <= names
    assert "Apache License, Version 2.0" in (folder / "NOTICE").read_text()


def test_a_models_folder_tokenizer_takes_precedence(tmp_path, bundled):
    te_dir = tmp_path / "text_encoder"
    write_t5_tokenizer(te_dir / T5_TOKENIZER_FOLDER)
    user = load_t5_tokenizer(ModelPaths(text_encoder_dirs=(te_dir,)))
    assert len(user) < 100  # the small test vocabulary, not the bundled one
    assert user("a cat").input_ids != bundled("a cat").input_ids


def _varied_strings(count: int) -> list[str]:
    """Prompts of words, digits, punctuation, weights, accents, CJK and odd spacing."""
    words = ["a", "photo", "of", "cat", "masterpiece", "best quality", "(red:1.3)", "[blue]", "4k", "8K,",
             "ultra-detailed", "Ünïcödé", "naïve", "café", "日本", "東京の夜", "emoji 🙂", "don't", "it's",
             "e.g.", "x=1", "100%", "C++", "<lora:foo:0.8>", "BREAK", "ALL CAPS", "snake_case", "tab\there",
             "new\nline", "  double  space ", "ß", "Ωmega", "ñandú", "1.5", "---", "...", "?!", "@user", "#tag"]
    generator = random.Random(1234)
    return [" ".join(generator.choice(words) for _ in range(generator.randint(1, 12))) for _ in range(count)]


def test_tokenizer_json_agrees_with_spiece_model(bundled):
    """tokenizer.json (what transformers loads) against the SentencePiece model it was converted
    from, on a few hundred varied prompts."""
    sentencepiece = pytest.importorskip("sentencepiece")
    folder = bundled_tokenizer_dir(T5_V1_1_TOKENIZER, "tokenizer.json")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    assert processor.get_piece_size() == 32000
    mismatches = []
    for text in _varied_strings(300):
        expected = processor.encode(text) + [1]
        if bundled(text).input_ids != expected:
            mismatches.append(text)
    assert not mismatches, mismatches[:5]

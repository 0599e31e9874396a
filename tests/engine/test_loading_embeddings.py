"""Textual-inversion files: A1111's formats, loaded/skipped per model, the token-id lookup."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import safetensors.torch
import torch

from webui_api.engine.embeddings import (
    Embedding,
    EmbeddingLibrary,
    EmbeddingStore,
    embedding_vectors,
    encoder_widths,
    load_embedding,
)
from webui_api.engine.loading import load_clip_tokenizer
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.loading.hashes import HashCache, sha256_of_file


class CodeInPickle:
    def __reduce__(self):
        return (CodeInPickle, ())


@pytest.fixture()
def folder(tmp_path):
    """A1111 .pt, a diffusers concept, an SDXL pair, and three files that are not embeddings."""
    torch.save(
        {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.ones(2, 768)}, "name": "bad-hands",
         "step": 1500, "sd_checkpoint": "e1441589", "sd_checkpoint_name": "v1-5-pruned"},
        tmp_path / "bad-hands.pt",
    )
    torch.save({"<cat-toy>": torch.full((768,), 0.5)}, tmp_path / "cat-toy.bin")
    safetensors.torch.save_file(
        {"clip_l": torch.zeros(3, 768), "clip_g": torch.zeros(3, 1280)}, str(tmp_path / "xl-style.safetensors")
    )
    torch.save({"string_to_param": {"*": torch.ones(1, 768)}, "payload": CodeInPickle()}, tmp_path / "sneaky.pt")
    (tmp_path / "notes.pt").write_bytes(b"not a pickle")
    safetensors.torch.save_file({"a": torch.zeros(1), "b": torch.zeros(1)}, str(tmp_path / "two-terms.safetensors"))
    return tmp_path


def test_a1111_pt_fields(folder):
    embedding = load_embedding(folder / "bad-hands.pt", HashCache(None))
    assert embedding.api_item() == {
        "step": 1500,
        "sd_checkpoint": "e1441589",
        "sd_checkpoint_name": "v1-5-pruned",
        "shape": 768,
        "vectors": 2,
    }
    assert embedding.sha256 == sha256_of_file(folder / "bad-hands.pt") and len(embedding.shorthash) == 12
    assert embedding.vectors_for("text_encoder").shape == (2, 768)


def test_concepts_and_sdxl_pairs(folder):
    concept = load_embedding(folder / "cat-toy.bin")
    assert concept.vector_count == 1 and concept.shape == 768 and concept.step is None
    pair = load_embedding(folder / "xl-style.safetensors")
    assert pair.shape == 2048 and pair.vector_count == 3
    assert pair.vectors_for("text_encoder").shape == (3, 768) and pair.vectors_for("text_encoder_2").shape == (3, 1280)
    with pytest.raises(KeyError, match="not 'unet'"):
        pair.vectors_for("unet")


def test_unreadable_files_are_skipped_with_a_warning(folder, caplog):
    library = EmbeddingLibrary(ModelPaths(embeddings_dirs=(folder,)))
    assert sorted(e.name for e in library.embeddings()) == ["bad-hands", "cat-toy", "xl-style"]
    logged = caplog.text
    assert "sneaky.pt" in logged and "--disable-safe-unpickle" in logged
    assert "notes.pt" in logged and "two-terms.safetensors" in logged


def test_loaded_and_skipped_follow_the_models_encoders(folder):
    library = EmbeddingLibrary(ModelPaths(embeddings_dirs=(folder,)))
    tokenizer = load_clip_tokenizer()
    sd1 = EmbeddingStore.build(library.embeddings(), {"text_encoder": 768}, tokenizer)
    assert list(sd1.loaded) == ["bad-hands", "cat-toy"] and list(sd1.skipped) == ["xl-style"]
    sdxl = EmbeddingStore.build(library.embeddings(), {"text_encoder": 768, "text_encoder_2": 1280}, tokenizer)
    assert list(sdxl.loaded) == ["xl-style"]
    listing = library.store_for(None).api_listing()
    assert set(listing["loaded"]) == {"bad-hands", "cat-toy", "xl-style"} and listing["skipped"] == {}


def test_match_at_finds_the_longest_name_by_token_ids():
    tokenizer = load_clip_tokenizer()
    short = Embedding("bad", {"text_encoder": torch.zeros(1, 8)})
    long = Embedding("bad-hands", {"text_encoder": torch.zeros(4, 8)})
    store = EmbeddingStore.build([short, long], {"text_encoder": 8}, tokenizer)
    tokens = tokenizer("a photo, bad-hands, bad art", add_special_tokens=False)["input_ids"]
    hands = tokens.index(tokenizer("bad", add_special_tokens=False)["input_ids"][0])
    match = store.match_at(tokens, hands)
    assert (
        match.embedding is long
        and match.token_count == len(tokenizer("bad-hands", add_special_tokens=False)["input_ids"]) > 1
    )
    second = tokens.index(tokens[hands], hands + 1)
    assert store.match_at(tokens, second).embedding is short
    assert store.match_at(tokens, 0) is None and store.match_at(tokens, 999) is None


def test_single_encoder_embedding_serves_the_refiners_only_encoder():
    wide = Embedding("g-only", {"text_encoder": torch.zeros(2, 1280)})
    store = EmbeddingStore.build([wide], {"text_encoder_2": 1280}, None)
    assert list(store.loaded) == ["g-only"] and wide.vectors_for("text_encoder_2").shape == (2, 1280)


def test_unknown_formats_are_refused():
    with pytest.raises(ValueError, match="exactly one term"):
        embedding_vectors({"string_to_param": {"a": torch.zeros(1), "b": torch.zeros(1)}})


def test_encoder_widths_of_a_model():
    model = SimpleNamespace(
        text_encoder=SimpleNamespace(config=SimpleNamespace(hidden_size=768)),
        text_encoder_2=SimpleNamespace(config=SimpleNamespace(hidden_size=1280)),
    )
    assert encoder_widths(model) == {"text_encoder": 768, "text_encoder_2": 1280}
    assert encoder_widths(SimpleNamespace(text_encoder=None, text_encoder_2=model.text_encoder_2)) == {
        "text_encoder_2": 1280
    }


def test_engine_lists_embeddings_for_the_loaded_model(tmp_path):
    from tests.engine.ldm_checkpoints import build_networks, write_checkpoint
    from webui_api.engine.facade import Engine

    sd, emb = tmp_path / "sd", tmp_path / "embeddings"
    write_checkpoint(sd / "tiny.safetensors", build_networks("sd1", seed=1))  # a 64-wide text encoder
    emb.mkdir()
    torch.save({"string_to_param": {"*": torch.ones(3, 64)}}, emb / "fits.pt")
    torch.save({"string_to_param": {"*": torch.ones(1, 768)}}, emb / "sd15.pt")
    engine = Engine(device="cpu", paths=ModelPaths(ckpt_dirs=(sd,), embeddings_dirs=(emb,)))
    assert set(engine.embeddings_listing()["loaded"]) == {"fits", "sd15"}  # nothing loaded yet
    model = engine.load()
    listing = engine.embeddings_listing()
    assert list(listing["loaded"]) == ["fits"] and list(listing["skipped"]) == ["sd15"]
    assert listing["loaded"]["fits"] == {
        "step": None,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "shape": 64,
        "vectors": 3,
    }
    ids = model.tokenizer("fits", add_special_tokens=False)["input_ids"]
    assert model.embeddings.match_at(ids, 0).embedding.name == "fits"
    torch.save({"string_to_param": {"*": torch.ones(1, 64)}}, emb / "new-one.pt")
    engine.refresh_embeddings()
    assert list(engine.embeddings_listing()["loaded"]) == ["fits", "new-one"]

"""A1111's get_closet_checkpoint_match over scanned checkpoint entries."""

from __future__ import annotations

from dataclasses import dataclass

from webui_api.engine.loading.discovery import closest_checkpoint_match


@dataclass(frozen=True)
class Entry:
    title: str
    names: tuple[str, ...]

    def aliases(self) -> tuple[str, ...]:
        return (self.title, *self.names)


ENTRIES = [
    Entry("model.safetensors [0123456789]", ("model.safetensors", "model", "0123456789")),
    Entry("sdxl/model-refiner.safetensors [aaaaaaaaaa]", ("sdxl/model-refiner.safetensors", "model-refiner")),
    Entry("unhashed.ckpt", ("unhashed.ckpt", "unhashed")),
]


def test_alias_first_then_shortest_title_then_checksum_stripped():
    assert closest_checkpoint_match(ENTRIES, "model-refiner") is ENTRIES[1]  # alias
    assert closest_checkpoint_match(ENTRIES, "model") is ENTRIES[0]  # alias beats the longer title
    assert closest_checkpoint_match(ENTRIES, "refiner") is ENTRIES[1]  # title substring
    assert closest_checkpoint_match(ENTRIES, "safetensors") is ENTRIES[0]  # shortest title containing it
    # a title from another install (other hash) or from before hashing
    assert closest_checkpoint_match(ENTRIES, "model.safetensors [fedcba9876]") is ENTRIES[0]
    assert closest_checkpoint_match(ENTRIES, "unhashed.ckpt [0123456789]") is ENTRIES[2]


def test_no_match_and_empty_names():
    assert closest_checkpoint_match(ENTRIES, "other.safetensors [0123456789]") is None
    assert closest_checkpoint_match(ENTRIES, "") is None
    assert closest_checkpoint_match(ENTRIES, None) is None
    assert closest_checkpoint_match(ENTRIES, "../Stable-diffusion/model.safetensors") is None

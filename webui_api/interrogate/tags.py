"""Turning tagger and ranker scores into A1111's caption text (no torch)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_SPECIAL = re.compile(r"([\\()])")


@dataclass(frozen=True)
class TagOptions:
    """A1111's deepbooru options, read from the options store."""

    threshold: float = 0.5  # interrogate_deepbooru_score_threshold
    sort_alpha: bool = True  # deepbooru_sort_alpha
    use_spaces: bool = True  # deepbooru_use_spaces
    escape: bool = True  # deepbooru_escape
    filter_tags: str = ""  # deepbooru_filter_tags
    include_ranks: bool = False  # interrogate_return_ranks

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TagOptions:
        return cls(
            threshold=float(options.get("interrogate_deepbooru_score_threshold", 0.5)),
            sort_alpha=bool(options.get("deepbooru_sort_alpha", True)),
            use_spaces=bool(options.get("deepbooru_use_spaces", True)),
            escape=bool(options.get("deepbooru_escape", True)),
            filter_tags=str(options.get("deepbooru_filter_tags", "") or ""),
            include_ranks=bool(options.get("interrogate_return_ranks", False)),
        )


def format_tags(tags: Sequence[str], probabilities: Sequence[float], options: TagOptions) -> str:
    """A1111's DeepDanbooru.tag_multi after the forward pass: threshold, drop `rating:*`, sort,
    filter, spaces, escaping, ranks; joined with ", "."""
    scores = {tag: float(p) for tag, p in zip(tags, probabilities, strict=True)
              if float(p) >= options.threshold and not tag.startswith("rating:")}
    if options.sort_alpha:
        ordered = sorted(scores)
    else:
        ordered = [tag for tag, _ in sorted(scores.items(), key=lambda item: -item[1])]
    filtered = {tag.strip().replace(" ", "_") for tag in options.filter_tags.split(",")}
    return ", ".join(_format_tag(tag, scores[tag], options) for tag in ordered if tag not in filtered)


def _format_tag(tag: str, probability: float, options: TagOptions) -> str:
    text = tag.replace("_", " ") if options.use_spaces else tag
    if options.escape:
        text = _SPECIAL.sub(r"\\\1", text)
    if options.include_ranks:
        text = f"({text}:{probability:.3f})"
    return text


def clip_suffix(matches: Sequence[tuple[str, float]], return_ranks: bool) -> str:
    """What A1111 appends to the BLIP caption for one category's matches."""
    if return_ranks:
        return "".join(f", ({match}:{score / 100:.3f})" for match, score in matches)
    return "".join(f", {match}" for match, _ in matches)

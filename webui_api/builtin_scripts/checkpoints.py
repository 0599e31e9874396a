"""Finding a checkpoint by the loose names scripts accept (A1111's get_closet_checkpoint_match)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import ValidationFailed

HASH_SUFFIX = re.compile(r"\s*\[[^\]]*\]\s*$")


def closest_checkpoint(checkpoints: Sequence[Any], name: str, script: str) -> Any:
    """An exact alias (title, name, file name, hash, ...) first; else the shortest title that
    contains `name`, then `name` without a " [hash]" suffix. Unknown names are a 422 naming the
    script, where A1111 fails an assertion."""
    for info in checkpoints:
        if name in info.aliases():
            return info
    for text in dict.fromkeys((name, HASH_SUFFIX.sub("", name))):
        found = sorted((info for info in checkpoints if text and text in info.title), key=lambda info: len(info.title))
        if found:
            return found[0]
    known = [info.title for info in checkpoints]
    raise ValidationFailed(f"{script}: unknown checkpoint {name!r}; known: {known}")

"""What every request body must satisfy before any handler sees it (the schema edge).

JSON lets a client send numbers and shapes that crash code far from the edge: `NaN` and
`Infinity` (Python's json accepts them), integers beyond 64 bits (SQLite and torch refuse
them with an OverflowError), and free-form fields nested hundreds of levels deep (the job
runs, then the response cannot be serialised). One validator, applied to every field of
every request model, refuses all of them with FastAPI's 422:

- floats are finite (free-form containers included);
- integers fit in a signed 64-bit integer (seeds and priorities included);
- containers nest at most MAX_NESTING levels.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

MAX_NESTING = 32  # A1111 payloads nest 4-5 levels (alwayson_scripts -> args -> unit -> image)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """Raise ValueError naming `where` for a non-finite float, an out-of-range int or deep nesting."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{where} must fit in a signed 64-bit integer; received {value}")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number; received {value}")
        return
    if isinstance(value, (dict, list, tuple)):
        _check_container(value, where, depth)
    elif isinstance(value, BaseModel):
        return  # a nested model validated its own fields


def _check_container(value: dict | list | tuple, where: str, depth: int) -> None:
    if depth >= MAX_NESTING:
        raise ValueError(f"{where} nests deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            check_json_value(item, f"{where}.{key}", depth + 1)
    else:
        for index, item in enumerate(value):
            check_json_value(item, f"{where}[{index}]", depth + 1)


class EdgeModel(BaseModel):
    """Base of every request model: unknown keys ignored (like A1111), edge values checked."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())

    @field_validator("*", mode="after")
    @classmethod
    def _edge_values(cls, value: Any, info: ValidationInfo) -> Any:
        check_json_value(value, info.field_name or "value")
        return value

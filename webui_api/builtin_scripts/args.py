"""Positional script arguments: what each one means, its default, and how a client's value is read.

A1111 passes `script_args` to a selectable script as the values of its UI controls, in the
order its `ui()` returns them. One `ArgSpec` per control describes that slot: the label and
bounds `/sdapi/v1/script-info` lists, the default used when the client sends fewer values
(A1111 would take the UI default too), and a reader that turns a JSON value into the type
the script needs, refusing nonsense with a 422 that names the script, the slot and the value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationFailed

Reader = Callable[[Any], Any]


@dataclass(frozen=True)
class ArgSpec:
    """One UI control of a script, as A1111's ScriptArg describes it."""

    label: str
    value: Any
    read: Reader
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: tuple[str, ...] | None = None

    def api_item(self) -> dict[str, Any]:
        """A1111's ScriptArg: {label, value, minimum, maximum, step, choices}."""
        return {
            "label": self.label,
            "value": self.value,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "step": self.step,
            "choices": None if self.choices is None else list(self.choices),
        }


class BadScriptArg(ValidationFailed):
    """A script_args value that cannot mean what its slot needs."""

    def __init__(self, script: str, index: int, spec: ArgSpec, value: Any, expected: str) -> None:
        super().__init__(
            f"script_args[{index}] ({spec.label or 'unnamed'}) of script '{script}' must be {expected}; received "
            f"{value!r}"
        )


def bind(script: str, specs: Sequence[ArgSpec], values: Sequence[Any] | None) -> list[Any]:
    """One value per spec: the client's value read by the spec, or the spec's default when the
    client sent fewer values or null. Values beyond the script's slots are ignored, as A1111's
    slicing of script_args ignores them."""
    values = list(values or [])
    bound = []
    for index, spec in enumerate(specs):
        raw = values[index] if index < len(values) else None
        bound.append(spec.value if raw is None else _read(script, index, spec, raw))
    return bound


def _read(script: str, index: int, spec: ArgSpec, raw: Any) -> Any:
    try:
        return spec.read(raw)
    except (TypeError, ValueError) as exc:
        raise BadScriptArg(script, index, spec, raw, str(exc) or "a valid value") from exc


# --------------------------------------------------------------------------- readers


def read_bool(value: Any) -> bool:
    """JSON booleans, 0/1 and the strings "true"/"false" (form clients send those)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError("a boolean")


def read_int(value: Any) -> int:
    """Integers, integral floats and numeric strings; not booleans."""
    number = _number(value, "an integer")
    if number != int(number):
        raise ValueError("an integer")
    return int(number)


def read_float(value: Any) -> float:
    return _number(value, "a finite number")


def _number(value: Any, expected: str) -> float:
    """A finite float from a number or numeric string; booleans are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(expected)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(expected) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(expected)
    return number


def read_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("a string")
    return str(value)


def read_str_list(value: Any) -> list[str]:
    """A dropdown's multiselect value: a list of strings (a single string is one item)."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    raise ValueError("a list of strings")


def read_int_or_str(value: Any) -> int | str:
    """A radio or dropdown with type="index": A1111's UI sends the index; API clients send
    either the index or the choice's text."""
    if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
        return value
    return read_int(value)


def one_of(choices: Sequence[str]) -> Reader:
    """A radio with type="value": one of its choices, exactly."""

    def read(value: Any) -> str:
        text = read_str(value)
        if text not in choices:
            raise ValueError(f"one of {list(choices)}")
        return text

    return read

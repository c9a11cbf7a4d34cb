"""Type checks for the fields of the configuration dataclasses (profile, train, IRM, analysis
sections), read from their annotations, so every section is checked by one rule: an int is a
whole number in 0 .. 2**63 - 1 (not a bool), a PositiveInt one in 1 .. 2**63 - 1, a float a
finite number, a tuple a list of its item type, `X | None` also None."""

from __future__ import annotations

import math
import types
import typing

INT_LIMIT = 2**63
# A count that 0 would make meaningless or silently mean something else (epochs, a row limit).
PositiveInt = typing.NewType("PositiveInt", int)


def _describe(kind) -> str:
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        return " or ".join(_describe(k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is tuple:
        return f"a list (each item {_describe(typing.get_args(kind)[0])})"
    return {int: "a whole number from 0 to 2**63 - 1", PositiveInt: "a whole number from 1 to 2**63 - 1", float: "a finite number",
            bool: "true or false", str: "a string", dict: "a mapping", type(None): "null"}.get(kind, str(kind))


def convert(value, kind):
    """`value` as `kind` (a list becomes a tuple), or ValueError saying what was expected."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(kind):
            try:
                return convert(value, option)
            except ValueError:
                continue
        raise ValueError(f"expected {_describe(kind)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected {_describe(kind)}, got {value!r}")
        return tuple(convert(item, typing.get_args(kind)[0]) for item in value)
    if kind is type(None):
        if value is not None:
            raise ValueError(f"expected null, got {value!r}")
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if kind in (int, PositiveInt):
        lowest = 1 if kind is PositiveInt else 0
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value < INT_LIMIT:
            raise ValueError(f"expected {_describe(kind)}, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a finite number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range, e.g. 10**400
            raise ValueError("expected a finite number, got an integer too large for a float (over 1.8e308)") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if kind in (str, dict):
        if not isinstance(value, kind):
            raise ValueError(f"expected {_describe(kind)}, got {value!r}")
        return value
    return value


def check_fields(obj, section: str, skip: tuple[str, ...] = ()) -> None:
    """Convert and check every field of the frozen dataclass `obj` against its annotation (in
    place); ValueError naming `section`.field and what it expected."""
    hints = typing.get_type_hints(type(obj))
    for name, kind in hints.items():
        if name in skip:
            continue
        try:
            object.__setattr__(obj, name, convert(getattr(obj, name), kind))
        except ValueError as err:
            raise ValueError(f"{section}{name}: {err}.") from None


def check_mapping(values: dict, hints: dict, section: str) -> dict:
    """`values` with each key checked against `hints` (name -> annotation); the same rules."""
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = convert(value, hints[name])
        except ValueError as err:
            raise ValueError(f"{section}{name}: {err}.") from None
    return checked

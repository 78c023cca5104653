"""Argument checks of every public entry point: one function per kind of argument.

Rules: a value of the wrong *type* raises :class:`TypeError`, a value of the right type outside
what is allowed raises :class:`ValueError`; both messages name the argument, say what is allowed
and show what was given. Nothing is clamped or converted silently (an int given for a float is
accepted as the number it is; a bool is never a number).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "SEED_LIMIT",
    "INT64_MIN",
    "INT64_MAX",
    "check_int",
    "check_number",
    "check_probability",
    "check_bool",
    "check_seed",
    "check_choice",
    "check_instance",
    "check_str",
    "check_sequence",
    "check_int_sequence",
    "check_mapping",
    "check_path",
]

SEED_LIMIT = 2**63
"""Seeds are ints in ``[0, SEED_LIMIT)``: torch generators take 64-bit seeds, and values outside this
range would wrap around (``-1`` and ``2**64 - 1`` would draw the same images)."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of an int that becomes a torch ``int64`` (labels, token ids): a Python int outside it cannot."""


def _range_text(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"in [{minimum}, {maximum}]"
    if minimum is not None:
        return f">= {minimum}"
    if maximum is not None:
        return f"<= {maximum}"
    return ""


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) within ``[minimum, maximum]`` (either may be ``None``)."""
    allowed = " ".join(filter(None, ("an int", _range_text(minimum, maximum))))
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_number(
    value,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """``float(value)`` if it is a finite real number (not a bool) within the given bounds."""
    if minimum is not None and maximum is not None:
        allowed = f"in {'[' if min_inclusive else '('}{minimum:g}, {maximum:g}{']' if max_inclusive else ')'}"
    elif minimum is not None:
        allowed = f"{'>=' if min_inclusive else '>'} {minimum:g}"
    elif maximum is not None:
        allowed = f"{'<=' if max_inclusive else '<'} {maximum:g}"
    else:
        allowed = ""
    allowed = f"a finite number{' ' + allowed if allowed else ''}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def check_probability(value, name: str) -> float:
    """A number in ``[0, 1]``."""
    return check_number(value, name, 0.0, 1.0)


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_seed(value, name: str = "g_seed", allow_none: bool = True) -> int | None:
    """A seed: an int in ``[0, 2**63)`` (or ``None`` where allowed: the global random state is used)."""
    if value is None and allow_none:
        return None
    allowed = f"an int in [0, 2**63){' or None' if allow_none else ''}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_choice(value, name: str, choices: Sequence):
    """``value`` if it is one of ``choices`` (compared with ``==``; bools never match ints)."""
    for c in choices:
        if type(value) is type(c) and value == c:
            return value
    raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def check_instance(value, name: str, types: type | tuple[type, ...], what: str):
    """``value`` if it is an instance of ``types``; otherwise ``TypeError`` saying ``name`` must be ``what``."""
    if not isinstance(value, types):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {_short_repr(value)}")
    return value


def check_str(value, name: str, non_empty: bool = True) -> str:
    """A string (not blank where ``non_empty``)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a {'non-empty ' if non_empty else ''}string, got {_short_repr(value)}")
    if non_empty and not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def check_sequence(value, name: str, check_item: Callable[[object, str], object], what: str,
                   non_empty: bool = True) -> tuple:
    """A list/tuple/range (never a string or bytes, whose items are characters or small ints) whose items each
    pass ``check_item(item, label)``, as a tuple of what ``check_item`` returns. ``what`` names the items."""
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of {what} (a list or tuple), got {type(value).__name__} "
                        f"{_short_repr(value)}")
    if non_empty and len(value) == 0:
        raise ValueError(f"{name} must not be empty (a sequence of {what})")
    return tuple(check_item(v, f"every value of {name}") for v in value)


def check_int_sequence(value, name: str, minimum: int | None = None, maximum: int | None = None,
                       non_empty: bool = True) -> tuple[int, ...]:
    """A list/tuple of ints within the bounds, as a tuple."""
    allowed = " ".join(filter(None, ("ints", _range_text(minimum, maximum))))
    return check_sequence(value, name, lambda v, label: check_int(v, label, minimum, maximum), allowed, non_empty)


def check_mapping(value, name: str, check_key: Callable[[object, str], object],
                  check_value: Callable[[object, str], object], what: str) -> dict:
    """A mapping whose keys and values pass their checks (each called with the item and a label naming it), as a
    new dict of what the checks return. ``what`` says what the mapping maps (``"(start, n) -> seconds"``)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping {what}, got {type(value).__name__} {_short_repr(value)}")
    out = {}
    for key, item in value.items():
        out[check_key(key, f"every key of {name}")] = check_value(item, f"{name}[{key!r}]")
    return out


def check_path(value, name: str, allow_none: bool = True) -> Path | None:
    """A path given as a string or an ``os.PathLike`` (or ``None`` where allowed), as a :class:`~pathlib.Path`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (a string or a pathlib.Path){' or None' if allow_none else ''}, "
                        f"got {type(value).__name__} {_short_repr(value)}")
    if isinstance(value, str) and not value:
        raise ValueError(f"{name} must be a path, got an empty string")
    return Path(value)


def _short_repr(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Argument checks of every public entry point: one function per kind of argument.

Rules: a value of the wrong *type* raises :class:`TypeError`, a value of the right type outside
what is allowed raises :class:`ValueError`; both messages name the argument, say what is allowed
and show what was given. Nothing is clamped or converted silently (an int given for a float is
accepted as the number it is; a bool is never a number).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "SEED_LIMIT",
    "check_int",
    "check_number",
    "check_probability",
    "check_bool",
    "check_seed",
    "check_choice",
    "check_int_sequence",
]

SEED_LIMIT = 2**63
"""Seeds are ints in ``[0, SEED_LIMIT)``: torch generators take 64-bit seeds, and values outside this
range would wrap around (``-1`` and ``2**64 - 1`` would draw the same images)."""


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


def check_int_sequence(value, name: str, minimum: int | None = None, maximum: int | None = None,
                       non_empty: bool = True) -> tuple[int, ...]:
    """A list/tuple of ints within the bounds, as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    if non_empty and len(value) == 0:
        raise ValueError(f"{name} must not be empty")
    return tuple(check_int(v, f"every value of {name}", minimum, maximum) for v in value)

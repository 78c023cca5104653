"""Argument checks shared by the library's public entry points."""

from __future__ import annotations

__all__ = ["check_int"]


def check_int(value, name: str, minimum: int) -> int:
    """``value`` if it is an int (not a bool) ``>= minimum``; otherwise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value

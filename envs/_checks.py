"""Argument checks shared by the lagrl environments."""

from __future__ import annotations

import numbers


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``; otherwise a ``ValueError`` saying so."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; pass e.g. {name}={max(minimum, 1)}")
    return int(value)

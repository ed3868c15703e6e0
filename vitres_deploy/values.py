"""Checks of the values a user gives: whole numbers and finite real numbers in a range.

Each check raises a :class:`~vitres_deploy.errors.VitresError` (a :class:`SettingsError` unless the caller's
family is a narrower one) whose ``field`` is the value's name, so the command line names the flag. NaN and
infinity fail every check: a comparison with NaN is false either way, so a plain ``value < low`` lets it by.
"""

from __future__ import annotations

import math

from .errors import SettingsError, VitresError


def check_count(name: str, value: int, *, error: type[VitresError] = SettingsError) -> None:
    """Raise ``error`` (field ``name``) unless ``value`` is a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{name} {value!r} must be a whole number of at least 1", field=name)


def check_real(name: str, value: float, *, low: float | None = None, low_open: float | None = None,
               high_open: float | None = None, error: type[VitresError] = SettingsError) -> None:
    """Raise ``error`` (field ``name``) unless ``value`` is a finite number in the given range: at least
    ``low``, above ``low_open``, below ``high_open``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or value >= low) and (low_open is None or value > low_open)
    ok = ok and (high_open is None or value < high_open)
    if not ok:
        bounds = [f">= {low:g}" if low is not None else "", f"> {low_open:g}" if low_open is not None else "",
                  f"< {high_open:g}" if high_open is not None else ""]
        raise error(f"{name} {value!r} must be a finite number {' and '.join(b for b in bounds if b)}", field=name)

"""Numbers from users, parsed strictly in one place: ASCII digits only, finite, within bounds, or a 400 naming them.

Python's own int() and float() are generous: int("²") fails only after str.isdigit() said yes, int("٣") is 3,
int(" 1_0 ") is 10, float("1e400") is inf and float("nan") is a number. None of that is a number a client meant
to send, so every number that comes from a request (query parameters, header values, JSON values, the strings
of TES backend_parameters) goes through the functions here instead."""
from __future__ import annotations

import math
import re
from typing import Any

from .errors import BadRequest

INT_RE = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)
NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?", re.ASCII)
INT64 = 2**63 - 1          # the widest integer a column or a backend takes


class NumberError(BadRequest):
    """A number a client sent that is not one, or not one in range."""


def _bounds(value: float, what: str, low: float | None, high: float | None, **details: Any) -> None:
    if low is not None and value < low:
        raise NumberError(f"{what} must be at least {low:g}, not {value:g}", **details)
    if high is not None and value > high:
        raise NumberError(f"{what} must be at most {high:g}, not {value:g}", **details)


def parse_int(text: Any, what: str, low: int | None = -INT64, high: int | None = INT64, **details: Any) -> int:
    """A decimal integer written in ASCII digits (an optional sign, nothing around it)."""
    if not isinstance(text, str) or not INT_RE.fullmatch(text):
        raise NumberError(f"{what} must be a whole number written in digits 0-9, not {_show(text)}", **details)
    value = int(text)
    _bounds(value, what, low, high, **details)
    return value


def parse_number(text: Any, what: str, low: float | None = None, high: float | None = None, **details: Any) -> float:
    """A finite decimal number (digits 0-9, an optional fraction and exponent); never NaN or infinity."""
    if not isinstance(text, str) or not NUMBER_RE.fullmatch(text):
        raise NumberError(f"{what} must be a number written in digits 0-9, not {_show(text)}", **details)
    value = float(text)
    if not math.isfinite(value):
        raise NumberError(f"{what} is too large ({_show(text)})", **details)
    _bounds(value, what, low, high, **details)
    return value


def json_int(value: Any, what: str, low: int | None = -INT64, high: int | None = INT64, **details: Any) -> int:
    """An integer from a parsed JSON document: a JSON integer (or a float with no fraction), never true/false."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise NumberError(f"{what} must be an integer, not {_show(value)}", **details)
    _bounds(value, what, low, high, **details)
    return value


def json_number(value: Any, what: str, low: float | None = None, high: float | None = None, **details: Any) -> float:
    """A finite number from a parsed JSON document, never true/false."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NumberError(f"{what} must be a number, not {_show(value)}", **details)
    if isinstance(value, int) and abs(value) > INT64:
        raise NumberError(f"{what} is too large", **details)
    if not math.isfinite(value):
        raise NumberError(f"{what} must be a finite number", **details)
    _bounds(value, what, low, high, **details)
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

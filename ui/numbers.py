"""Reading a number as a person types it into a form ("1e-4", "0.0001", "0,0001", " 2 000 "), and the words that
say which field is wrong and why. Pure Python: the form, its tests and the Dataset tab share it."""
from __future__ import annotations

import math
import re

from trainer.config import FLOAT, INT, Field, allowed_text
from trainer.config.schema import sensible_range

_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_THOUSANDS_COMMA = re.compile(r"^[+-]?[1-9]\d{0,2}(,\d{3})+$")  # "1,000" or "12,500,000"


class NumberInputError(ValueError):
    """A typed number that cannot be read; the message starts with the field's label."""


def read_number(label: str, text: object, whole: bool) -> float | int:
    """The number in `text`, or NumberInputError saying what was typed and what would be read. A single comma is
    a decimal comma ("0,0001" is 0.0001), except where it can only be a thousands separator ("1,000" for a whole
    number field); an ambiguous "1,000" in a decimal field is refused rather than guessed."""
    if isinstance(text, bool):
        raise NumberInputError(f"{label}: {text!r} is not a number")
    if isinstance(text, (int, float)):
        value = text
    else:
        value = _parse_text(label, str(text if text is not None else ""), whole)
    if isinstance(value, float) and not math.isfinite(value):
        raise NumberInputError(f"{label}: {text!r} is not a finite number")
    if whole:
        if float(value) != int(value):
            raise NumberInputError(f"{label}: {text!r} must be a whole number")
        return int(value)
    return float(value)


def _parse_text(label: str, raw: str, whole: bool) -> float:
    typed = raw.strip().replace(" ", "").replace("\u202f", "").replace("_", "")
    if not typed:
        raise NumberInputError(f"{label}: empty; type a number")
    if "," in typed:
        if _THOUSANDS_COMMA.match(typed) and not whole and "." not in typed:
            raise NumberInputError(f"{label}: {raw.strip()!r} is ambiguous (a thousands separator or a decimal "
                                   f"comma?); write {typed.replace(',', '')} or {typed.replace(',', '.', 1)}")
        if _THOUSANDS_COMMA.match(typed):
            typed = typed.replace(",", "")
        elif typed.count(",") == 1 and "." not in typed:
            typed = typed.replace(",", ".")  # a decimal comma, as many keyboards type it
        else:
            raise NumberInputError(f"{label}: {raw.strip()!r} is not a number (use one decimal point, like 0.0001)")
    if not _PLAIN_NUMBER.match(typed):
        examples = "a whole number, like 10" if whole else "examples: 0.0001, 1e-4, 0,0001"
        raise NumberInputError(f"{label}: {raw.strip()!r} is not a number ({examples})")
    return float(typed)


def number_field_problem(field: Field, text: object) -> str | None:
    """What is wrong with a typed value of a number field, by its label: unreadable or outside the allowed range."""
    try:
        value = read_number(field.label, text, whole=field.type == INT)
    except NumberInputError as exc:
        return str(exc)
    low, high = field.min, field.max
    if (low is not None and (value <= low if field.min_exclusive else value < low)) or \
            (high is not None and value > high):
        return f"{field.label}: {format_number(value)} is not allowed (must be {allowed_text(field)})"
    if field.multiple_of and value % field.multiple_of:
        return f"{field.label}: {format_number(value)} must be a multiple of {field.multiple_of}"
    return None


def unusual_value_warning(field: Field, value: float | int) -> str | None:
    """A warning when an allowed value is far outside what people use (a learning rate of 1.0, rank 999)."""
    sensible = sensible_range(field.name)
    if sensible is None or value == 0 and field.min == 0:  # 0 means "off" or "auto" wherever it is allowed
        return None
    low, high = sensible
    if low <= value <= high:
        return None
    return (f"{field.label}: {format_number(value)} is far outside the usual range "
            f"({format_number(low)} to {format_number(high)})")


def format_number(value: float | int | None) -> str:
    """How the form shows a number: 0.0001 as "0.0001", 1e-06 as "1e-06", 8.0 as "8"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def is_number_field(field: Field) -> bool:
    return field.type in (INT, FLOAT)


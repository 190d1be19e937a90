"""Checking and converting one value against its Field, and writing values the way TOML spells them."""
from __future__ import annotations

import difflib
import json
import math
import tomllib
from typing import Any

import dataclasses

from .schema import BOOL, CHOICE, FLOAT, INT, PATH, STR, STR_LIST, TABLE_LIST, Field

_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}


def format_value(value: Any) -> str:
    """A value as TOML writes it (also how messages quote the user's value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _toml_string(text: str) -> str:
    # JSON escapes are a subset of TOML basic-string escapes, except that TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def allowed_text(field: Field) -> str:
    """What the field accepts, in words, for messages and the docs table."""
    if field.type == CHOICE:
        return "one of " + ", ".join(format_value(c) for c in field.choices)
    if field.type == TABLE_LIST:
        return f"[[{field.name}]] tables (keys below)"
    if field.type in (INT, FLOAT):
        return _range_text(field) or ("a whole number" if field.type == INT else "a number")
    if field.model_ref:
        return "a path, a hub id or a builtin: id"
    return {BOOL: "true or false", STR: "a string", PATH: "a path", STR_LIST: "a list of strings"}[field.type]


def _range_text(field: Field) -> str:
    low, high = field.min, field.max
    if low is not None and high is not None and not field.min_exclusive:
        return f"between {_number(low)} and {_number(high)}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if field.min_exclusive else '>='} {_number(low)}")
    if high is not None:
        parts.append(f"<= {_number(high)}")
    return " and ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def convert_value(field: Field, value: Any) -> tuple[Any, str | None]:
    """(converted value, None) or (None, problem). The problem text starts with `name = value`."""
    if field.type == TABLE_LIST:
        return _convert_tables(field, value)
    shown = f"{field.name} = {format_value(value)}"
    type_problem = _type_problem(field, value)
    if type_problem:
        return None, f"{shown} has the wrong type (must be {type_problem})"
    texts = value if field.type == STR_LIST else [value] if isinstance(value, str) else []
    if any("\x00" in text for text in texts):  # the OS refuses such paths deep inside a run; say it here
        return None, f"{shown} contains a NUL byte, which no path, name or prompt may hold"
    if field.type == FLOAT:
        value = float(value)
        if not math.isfinite(value):
            return None, f"{shown} is not a finite number"
    if field.type == STR_LIST:
        value = list(value)
    if field.type in (INT, FLOAT) and not _in_range(field, value):
        return None, f"{shown} is out of range (must be {_range_text(field)})"
    if field.multiple_of and value % field.multiple_of:
        return None, f"{shown} is not a multiple of {field.multiple_of}"
    if field.type == CHOICE and value not in field.choices:
        close = difflib.get_close_matches(value.lower(), field.choices, n=1, cutoff=0.5)
        hint = f"; did you mean {format_value(close[0])}?" if close else ""
        return None, f"{shown} is not allowed (must be {allowed_text(field)}){hint}"
    if field.check and (problem := field.check(value)):
        return None, f"{shown} {problem}" if problem.startswith("is ") else f"{shown} is not valid ({problem})"
    return value, None


def _convert_tables(field: Field, value: Any) -> tuple[Any, str | None]:
    """A TABLE_LIST value: a list of tables, each key checked as its item field (messages name the table as
    `section.key[N]`, counting from 1), missing keys filled with their defaults (None: as the section)."""
    if not isinstance(value, list) or not all(isinstance(table, dict) for table in value):
        return None, (f"{field.name} has the wrong type (must be tables: write each one as [[{field.name}]] "
                      "followed by its keys)")
    items = {item.key: item for item in field.item_fields}
    tables = []
    for number, table in enumerate(value, start=1):
        where = f"{field.name}[{number}]"
        converted = {key: item.default for key, item in items.items()}
        for key, item_value in table.items():
            item = items.get(key)
            if item is None:
                close = difflib.get_close_matches(key, list(items), n=1, cutoff=0.6)
                hint = f"; did you mean `{close[0]}`?" if close else f" (keys: {', '.join(items)})"
                return None, f"`{where}.{key}` is not a key of [[{field.name}]]{hint}"
            converted[key], problem = convert_value(dataclasses.replace(item, section=where), item_value)
            if problem:
                return None, problem
        missing = [item.key for item in field.item_fields if item.required and not converted[item.key]]
        if missing:
            return None, f"{where}.{missing[0]} is required but missing"
        tables.append(converted)
    return tables, None


def _type_problem(field: Field, value: Any) -> str | None:
    if field.type == BOOL:
        ok = isinstance(value, bool)
    elif field.type == INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif field.type == FLOAT:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif field.type == STR_LIST:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, str)
    if ok:
        return None
    return {BOOL: "true or false", INT: "a whole number", FLOAT: "a number", STR_LIST: "a list of strings"}.get(
        field.type, "a string in quotes")


def _in_range(field: Field, value: float) -> bool:
    if field.min is not None and (value <= field.min if field.min_exclusive else value < field.min):
        return False
    return field.max is None or value <= field.max


def parse_override_value(field: Field, text: str) -> Any:
    """The value of a `section.key=value` override: read as a TOML value, so numbers, booleans, quoted strings
    and lists work; bare words stay strings for text fields; yes/no/1/0 work for booleans."""
    text = text.strip()
    if field.type == BOOL and text.lower() in _TRUE_WORDS | _FALSE_WORDS:
        return text.lower() in _TRUE_WORDS
    try:
        parsed = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        parsed = None
    if field.type in (STR, PATH, CHOICE) and not isinstance(parsed, str):
        return text
    if field.type == STR_LIST and not isinstance(parsed, list):
        return [parsed if isinstance(parsed, str) else text]
    return text if parsed is None else parsed

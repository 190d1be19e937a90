"""The concepts editor's values: `[[dataset.concepts]]` as up to MAX_CONCEPTS rows of the method form, one value
per key of trainer.config.schema.CONCEPT_FIELDS (a key added there gets a field in every row). A row is the
list of what its fields show; the form keeps all rows, the unused ones blank. Pure Python (the form and its tests
share it): reading rows into tables with numbers read as typed (ui.numbers), writing tables back into rows,
naming a row's problems by "Concept N · label", and the row moves (remove, up, down)."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from trainer.config import BOOL, FLOAT, INT, STR, Field, find_field

from .numbers import format_number, number_field_problem, read_number

CONCEPTS = "dataset.concepts"
CONCEPT_FIELDS: tuple[Field, ...] = find_field(CONCEPTS).item_fields
MAX_CONCEPTS = 8
# What an override left as is shows (a key whose default None means "as the [dataset] key of the same name").
AS_DATASET = "as in Dataset settings"
SWITCH_CHOICES = (AS_DATASET, "on", "off")
# Shown unfolded in each row, in this order; the other keys sit in the row's folded "More" accordion.
PLAIN_KEYS = ("dir", "repeats", "caption", "loss_weight")
_TABLE_KEY = re.compile(r"(?<![\w.])dataset\.concepts\[(\d+)\]\.(\w+)")


def is_plain(f: Field) -> bool:
    return f.key in PLAIN_KEYS


def row_field(number: int, f: Field) -> Field:
    """Field `f` of concept row `number` (from 1): named `dataset.concepts[N].key` (the config's name for it)
    and labelled "Concept N · Label", so every message says which row and which field."""
    return dataclasses.replace(f, section=f"{CONCEPTS}[{number}]", label=f"Concept {number} · {f.label}")


def row_element_id(number: int, f: Field) -> str:
    return f"field-dataset-concepts-{number}-{f.key}"


def is_switch(f: Field) -> bool:
    """An on/off override that may also follow the [dataset] setting (shown as three choices)."""
    return f.type == BOOL and f.default is None


def shown_value(f: Field, value: Any) -> Any:
    """A table value as its field shows it: numbers as text, "as in Dataset settings" for an override left out."""
    if is_switch(f):
        return AS_DATASET if value is None else "on" if value else "off"
    if f.type in (INT, FLOAT):
        return format_number(value)
    if f.type == BOOL:
        return bool(value)
    return "" if value is None else value


BLANK_ROW: tuple[Any, ...] = tuple(shown_value(f, f.default) for f in CONCEPT_FIELDS)
ROW_SIZE = len(CONCEPT_FIELDS)


def _typed(f: Field, shown: Any) -> Any:
    """A shown value as the table holds it (numbers must be readable: see row_problems)."""
    if is_switch(f):
        return None if shown in (None, "", AS_DATASET) else shown == "on"
    if f.type in (INT, FLOAT):
        return read_number(f.label, shown, whole=f.type == INT)
    if f.type == BOOL:
        return bool(shown)
    text = "" if shown is None else str(shown)
    text = text.strip() if f.type != STR or f.default is None else text  # paths and extensions: no stray spaces
    return None if f.default is None and not text else text


def _compared(f: Field, shown: Any) -> Any:
    if f.type in (INT, FLOAT):
        return shown if number_field_problem(f, shown) else _typed(f, shown)
    value = _typed(f, shown)
    return value.strip() if isinstance(value, str) else value


def is_blank(row: list[Any]) -> bool:
    """A row nobody filled in (it is not a concept)."""
    return all(_compared(f, shown) == _compared(f, blank)
               for f, shown, blank in zip(CONCEPT_FIELDS, row, BLANK_ROW, strict=True))


def rows_of(values: list[Any]) -> list[list[Any]]:
    """The editor's flat values (row after row) as MAX_CONCEPTS rows."""
    if len(values) != MAX_CONCEPTS * ROW_SIZE:
        raise ValueError(f"the concepts editor holds {MAX_CONCEPTS * ROW_SIZE} values, got {len(values)}")
    return [list(values[start:start + ROW_SIZE]) for start in range(0, len(values), ROW_SIZE)]


def used_rows(values: list[Any]) -> list[int]:
    """The numbers (from 1) of the rows that are concepts, in order: table N of the job is row used_rows[N-1]."""
    return [number for number, row in enumerate(rows_of(values), start=1) if not is_blank(row)]


def concept_tables(values: list[Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(the [[dataset.concepts]] tables of the filled rows, problems by `dataset.concepts[N].key`). A number that
    cannot be read, or a row without a folder, is a problem naming "Concept N · label"; blank rows are skipped
    and an override left "as in Dataset settings" is left out of the table."""
    tables, problems = [], {}
    rows = rows_of(values)
    for number in used_rows(values):
        table = {}
        for f, shown in zip(CONCEPT_FIELDS, rows[number - 1]):
            named = row_field(number, f)
            problem = number_field_problem(named, shown) if f.type in (INT, FLOAT) else None
            if problem:
                problems[named.name] = problem
                continue
            value = _typed(f, shown)
            if f.required and not value:
                problems[named.name] = f"{named.label}: empty; choose the concept's folder, or remove the row"
            if value is not None:
                table[f.key] = value
        tables.append(table)
    return tables, problems


def concept_values(tables: list[dict[str, Any]]) -> list[Any]:
    """Tables (as JobConfig holds them) as the editor's flat values, blank rows after them. Only the first
    MAX_CONCEPTS tables fit (the form says so when a file has more: forms.settings_the_form_cannot_hold)."""
    rows = [[shown_value(f, table.get(f.key, f.default)) for f in CONCEPT_FIELDS] for table in tables[:MAX_CONCEPTS]]
    rows += [list(BLANK_ROW)] * (MAX_CONCEPTS - len(rows))
    return [value for row in rows for value in row]


def concept_problem(text: str, rows: list[int]) -> tuple[str, str] | None:
    """(field name, message) for a config problem about `dataset.concepts[N].key`, where table N came from row
    rows[N-1]: the message says "Concept R · label" where the config says the table's key (blank rows before it
    make N and R differ). None for a problem about anything else."""
    found = _TABLE_KEY.search(text)
    if not found:
        return None
    table, key = int(found.group(1)), found.group(2)
    f = next((f for f in CONCEPT_FIELDS if f.key == key), None)
    if f is None or not 1 <= table <= len(rows):
        return None
    named = row_field(rows[table - 1], f)
    return named.name, text[:found.start()] + named.label + text[found.end():]


def remove_row(values: list[Any], index: int) -> list[Any]:
    """The values with row `index` (from 0) taken out; the rows below move up and a blank row ends the list."""
    rows = rows_of(values)
    rows = rows[:index] + rows[index + 1:] + [list(BLANK_ROW)]
    return [value for row in rows for value in row]


def move_row(values: list[Any], index: int, step: int, shown: int) -> list[Any]:
    """The values with row `index` swapped with its neighbour `step` (-1 up, +1 down) among the `shown` rows."""
    rows = rows_of(values)
    other = index + step
    if 0 <= other < min(shown, MAX_CONCEPTS) and 0 <= index < MAX_CONCEPTS:
        rows[index], rows[other] = rows[other], rows[index]
    return [value for row in rows for value in row]


def rows_to_show(values: list[Any], shown: int = 0) -> int:
    """How many rows the editor shows: at least every row down to the last filled one."""
    used = used_rows(values)
    return min(MAX_CONCEPTS, max([shown, *used]) if used else shown)

"""Writing a job as TOML. A small writer of our own: the schema's value types (numbers, booleans, strings,
lists of strings, arrays of tables) are all it must handle, and it keeps the schema's section and key order."""
from __future__ import annotations

from typing import Any

from .schema import CURRENT_VERSION, SECTIONS, TABLE_LIST, section_fields
from .values import format_value

HEADER = f"# Kiln job (format version {CURRENT_VERSION}). Every key is described in docs/config.md.\n"


def job_to_toml(data: dict[str, Any]) -> str:
    """TOML text for a job dict as JobConfig.to_dict() returns it. Keys the job's method does not use are
    written only when they differ from the default, so nothing is lost and nothing is noise."""
    method = data.get("method", "")
    lines = [HEADER.rstrip("\n")]
    lines += [f"{f.key} = {format_value(data[f.key])}" for f in section_fields("") if f.key in data]
    for section in SECTIONS[1:]:
        values = data.get(section, {})
        kept = [f for f in section_fields(section)
                if f.key in values and (method in f.methods or values[f.key] != f.default)]
        tables = [f for f in kept if f.type == TABLE_LIST]
        if kept:
            lines += ["", f"[{section}]"]
            lines += [f"{f.key} = {_format_entry(values[f.key])}" for f in kept if f not in tables]
        for f in tables:
            for table in values[f.key]:
                lines += ["", f"[[{f.name}]]"]
                # None means "as the section": left out, so it stays that way when the section changes.
                lines += [f"{key} = {format_value(value)}" for key, value in table.items() if value is not None]
    return "\n".join(lines) + "\n"


def _format_entry(value: Any) -> str:
    # One prompt per line keeps long prompt lists readable and diffable.
    if isinstance(value, list) and value:
        return "[\n" + "".join(f"    {format_value(v)},\n" for v in value) + "]"
    return format_value(value)

"""Writes trainer/config/sections.py: one typed dataclass per schema section, so `cfg.training.learning_rate`
has a type and a definition to go to, while the schema stays the one place a parameter is declared. A test
checks the file matches the schema (as docs/config.md does); `python -m trainer.config.docs` rewrites both."""
from __future__ import annotations

import json
from pathlib import Path

from .schema import BOOL, CHOICE, FLOAT, INT, PATH, SECTION_HELP, SECTIONS, STR, STR_LIST, TABLE_LIST, section_fields

SECTIONS_PATH = Path(__file__).resolve().parent / "sections.py"
_PY_TYPES = {INT: "int", FLOAT: "float", BOOL: "bool", STR: "str", PATH: "str", CHOICE: "str",
             STR_LIST: "list[str]", TABLE_LIST: "list[dict]"}


def section_class_name(section: str) -> str:
    """"textual_inversion" -> "TextualInversionSection"."""
    return "".join(part.title() for part in section.split("_")) + "Section"


def _attribute(field) -> str:
    py_type = _PY_TYPES[field.type]
    if field.type in (STR_LIST, TABLE_LIST):
        default = (f"field(default_factory=lambda: {field.default!r})" if field.default
                   else "field(default_factory=list)")
    elif field.type == FLOAT:
        default = repr(float(field.default))
    elif isinstance(field.default, str):
        default = json.dumps(field.default)  # double quotes, as the rest of the code base writes strings
    else:
        default = repr(field.default)
    comment = f"  # one of {', '.join(field.choices)}" if field.type == CHOICE else ""
    line = f"    {field.key}: {py_type} = {default}{comment}"
    return line if len(line) <= 120 else f"    {field.key}: {py_type} = {default}"


def render_sections_module() -> str:
    parts = ['"""The sections of a job, one typed dataclass each. Generated from trainer/config/schema.py by\n'
             '`.venv/bin/python -m trainer.config.docs`; do not edit (a test compares it with the schema)."""\n'
             "from __future__ import annotations\n\n"
             "from dataclasses import dataclass, field\n"]
    for section in SECTIONS[1:]:
        body = "\n".join(_attribute(f) for f in section_fields(section))
        parts.append(f"\n\n@dataclass\nclass {section_class_name(section)}:\n"
                     f'    """[{section}] {SECTION_HELP[section]}"""\n{body}\n')
    entries = "".join(f"    {json.dumps(s)}: {section_class_name(s)},\n" for s in SECTIONS[1:])
    names = "".join(f'    "{section_class_name(s)}",\n' for s in SECTIONS[1:])
    parts.append(f"\n\nSECTION_CLASSES = {{\n{entries}}}\n__all__ = [\n{names}    \"SECTION_CLASSES\",\n]\n")
    return "".join(parts)

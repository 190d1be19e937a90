"""docs/config.md, rendered from the schema and the Kohya migration table so the docs cannot drift.
Regenerate with: .venv/bin/python -m trainer.config.docs"""
from __future__ import annotations

from pathlib import Path

from .migrate import KOHYA_KEYS
from .save import write_text_atomic
from .schema import CURRENT_VERSION, FIELD_TYPES, METHODS, SECTION_HELP, SECTIONS, Field, section_fields
from .values import allowed_text, format_value

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "config.md"

_INTRO = f"""# Job file reference

<!-- Generated from trainer/config/schema.py by `.venv/bin/python -m trainer.config.docs`; do not edit. -->

A job is one TOML file: a top-level `method` and `version`, then one table per section. Keys left out take
the default. Relative paths resolve against the job file's folder. The current format version is
{CURRENT_VERSION}; older files and Kohya_ss-style files (flat keys such as `network_dim`) are migrated when read,
and a note is printed for every key that was mapped or ignored.

Any key can be overridden on the command line: `--set section.key=value` (top-level keys without a section,
e.g. `--set method=lora`). The value is read as a TOML value (`--set training.learning_rate=5e-5`,
`--set sample.prompts='["a cat", "a dog"]'`); text may be left unquoted, and booleans also accept
yes/no/1/0. Relative paths in overrides resolve against the current directory.

Types: {", ".join(f"`{t}`" for t in FIELD_TYPES)}. Methods: {", ".join(f"`{m}`" for m in METHODS)}.
Keys marked *advanced* are in the web UI's advanced section.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(field: Field) -> str:
    allowed = allowed_text(field)
    if field.multiple_of:
        allowed += f", multiple of {field.multiple_of}"
    if field.required:
        allowed = "**required**; " + allowed
    methods = "all" if set(field.methods) == set(METHODS) else ", ".join(field.methods)
    description = field.help + (" *(advanced)*" if field.advanced else "")
    cells = [f"`{field.key}`", field.type, f"`{format_value(field.default)}`", allowed, methods, description]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def render_config_doc() -> str:
    """The whole of docs/config.md."""
    parts = [_INTRO]
    for section in SECTIONS:
        title = "Top level" if not section else f"[{section}]"
        parts.append(f"## {title}\n\n{SECTION_HELP[section]}\n\n"
                     "| Key | Type | Default | Allowed | Methods | Description |\n|---|---|---|---|---|---|\n"
                     + "\n".join(_row(f) for f in section_fields(section)) + "\n")
    kohya_rows = "\n".join(f"| `{k.kohya}` | `{_cell(k.target)}` |" for k in KOHYA_KEYS)
    parts.append("## Kohya_ss keys\n\nA file with `version = 0`, or without a version but with Kohya_ss-style "
                 "top-level keys (also inside Kohya's `[*_arguments]` tables), is read as a Kohya file. These keys "
                 "are mapped; values Kiln does not support and all other keys are ignored and listed in the "
                 "migration notes.\n\n| Kohya key | Kiln key |\n|---|---|\n" + kohya_rows + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    from .sections_gen import SECTIONS_PATH, render_sections_module

    write_text_atomic(DOC_PATH, render_config_doc())
    write_text_atomic(SECTIONS_PATH, render_sections_module())
    print(f"wrote {DOC_PATH} and {SECTIONS_PATH}")

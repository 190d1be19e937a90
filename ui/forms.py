"""Method forms generated from the schema (trainer.config.FIELDS): one component per field, basic fields first
and advanced ones in an accordion per section. A field added to the schema appears here with no UI change.
Also the two directions between form values and a JobConfig."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from trainer.config.schema import BUILTIN_MODELS
from trainer.config import (BOOL, CHOICE, FLOAT, INT, SECTION_HELP, SECTIONS, STR_LIST, Field, JobConfig,
                            allowed_text, fields_for, parse_job)

METHOD_LABELS = {"lora": "LoRA", "dreambooth": "DreamBooth", "textual_inversion": "Textual Inversion"}
OPEN_SECTIONS = ("model", "dataset", "training")  # the rest start folded to keep the page short
OUTPUT_DIR = "output.dir"
OUTPUT_DIR_HELP = " Empty: the job's own output/ folder."


def form_fields(method: str) -> list[Field]:
    """The fields a method's form shows, in form order. The top-level keys are not fields: the tab is the
    method, and Kiln writes the version itself. Arrays of tables (dataset.concepts) are edited in the job file."""
    return [f for f in fields_for(method) if f.section and not f.hidden and not f.item_fields]


def section_title(section: str) -> str:
    return section.replace("_", " ").title()


def build_form(method: str, choices_for: dict[str, Callable[[], list[str]]]) -> list[gr.components.Component]:
    """Render the method's form in the current Blocks context; returns its components in form_fields order.
    `choices_for` gives suggestion lists for some fields by name (e.g. dataset.dir -> the workspace datasets)."""
    fields = form_fields(method)
    made: dict[str, gr.components.Component] = {}
    for section in SECTIONS[1:]:
        in_section = [f for f in fields if f.section == section]
        if not in_section:
            continue
        with gr.Accordion(section_title(section), open=section in OPEN_SECTIONS):
            gr.Markdown(SECTION_HELP[section])
            for f in (f for f in in_section if not f.advanced):
                made[f.name] = field_component(f, choices_for.get(f.name))
            advanced = [f for f in in_section if f.advanced]
            if advanced:
                with gr.Accordion(f"Advanced {section_title(section).lower()} settings", open=False):
                    for f in advanced:
                        made[f.name] = field_component(f, choices_for.get(f.name))
    return [made[f.name] for f in fields]


def field_component(f: Field, choices: Callable[[], list[str]] | None = None) -> gr.components.Component:
    """The input for one field: its label, help (as info), default, range and choices all from the schema."""
    info = f"{f.help} Allowed: {allowed_text(f)}." + (OUTPUT_DIR_HELP if f.name == OUTPUT_DIR else "")
    common = dict(label=f.label, info=info, elem_id=element_id(f))
    if f.type == BOOL:
        return gr.Checkbox(value=f.default, **common)
    if f.type in (INT, FLOAT):
        steps = {"step": f.multiple_of or 1} if f.type == INT else {}
        return gr.Number(value=f.default, minimum=f.min, maximum=f.max, precision=0 if f.type == INT else None,
                         **steps, **common)
    if f.type == CHOICE:
        return gr.Dropdown(choices=list(f.choices), value=f.default, **common)
    if f.type == STR_LIST:
        return gr.Textbox(value="\n".join(f.default), lines=3, placeholder="one per line", **common)
    if f.model_ref:
        return gr.Dropdown(choices=list(BUILTIN_MODELS), value=f.default, allow_custom_value=True, **common)
    if choices is not None:
        return gr.Dropdown(choices=choices(), value=f.default, allow_custom_value=True, **common)
    return gr.Textbox(value=f.default, **common)


def element_id(f: Field) -> str:
    """A stable HTML id per field (browser tests and custom CSS find fields by it)."""
    return "field-" + f.name.replace(".", "-")


def values_to_dict(method: str, values: list[Any]) -> dict[str, Any]:
    """Form values (in form_fields order) -> a job dict as tomllib would return it. Empty numbers are left out
    (so the default applies); whole floats become ints for int fields (browsers send 4.0)."""
    data: dict[str, Any] = {"method": method}
    for f, value in zip(form_fields(method), values, strict=True):
        if value is None and f.type in (INT, FLOAT):
            continue
        if f.type == INT and isinstance(value, float) and value.is_integer():
            value = int(value)
        if f.type == STR_LIST:
            value = [line.strip() for line in (value or "").splitlines() if line.strip()]
        if value is None:
            value = ""
        data.setdefault(f.section, {})[f.key] = value
    return data


def job_from_values(method: str, values: list[Any], base_dir: str, complete: bool = True) -> JobConfig:
    """Validate form values; raises ConfigError naming the field and why."""
    return parse_job(values_to_dict(method, values), source=f"<{METHOD_LABELS[method]} form>", base_dir=base_dir,
                     complete=complete)


def values_from_job(method: str, cfg: JobConfig) -> list[Any]:
    """A JobConfig's values for the method's form, in form_fields order."""
    return [("\n".join(cfg.get(f.name)) if f.type == STR_LIST else cfg.get(f.name)) for f in form_fields(method)]

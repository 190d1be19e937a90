"""Method forms generated from the schema (trainer.config.FIELDS): one component per field. Each method's
essentials come first, unfolded; the rest sit in a folded accordion per section. A field added to the schema
appears here with no UI change. Also the two directions between form values and a JobConfig, and the words that
put a problem next to the field it is about (by its label)."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from trainer.config.schema import BUILTIN_MODELS
from trainer.config import (BOOL, CHOICE, FLOAT, INT, SECTION_HELP, SECTIONS, STR_LIST, ConfigError, Field,
                            JobConfig, allowed_text, fields_for, find_field, parse_job)

from .numbers import format_number, number_field_problem, read_number, unusual_value_warning

METHOD_LABELS = {"lora": "LoRA", "dreambooth": "DreamBooth", "textual_inversion": "Textual Inversion"}
# What a person sets for every job of the method: shown first, unfolded. The rest is folded by section.
ESSENTIALS = {
    "lora": ("model.base", "dataset.dir", "dataset.default_caption", "lora.rank", "lora.alpha",
             "training.learning_rate", "training.epochs", "training.max_steps", "dataset.resolution"),
    "dreambooth": ("model.base", "dataset.dir", "dreambooth.instance_prompt", "dreambooth.class_prompt",
                   "dreambooth.prior_preservation", "dreambooth.use_lora", "training.learning_rate",
                   "training.epochs", "training.max_steps", "dataset.resolution"),
    "textual_inversion": ("model.base", "dataset.dir", "textual_inversion.token", "textual_inversion.init_word",
                          "textual_inversion.vectors", "training.learning_rate", "training.epochs",
                          "training.max_steps", "dataset.resolution"),
}
ESSENTIALS_HELP = ("The settings every job needs. The trigger word of a LoRA is the instance token of the dataset "
                   "folder (`10_sks dog`: \"sks\"), or the default caption for images without one.")
OUTPUT_DIR = "output.dir"
OUTPUT_DIR_HELP = " Empty: the job's own output/ folder."
ERROR_CLASS = "kiln-field-error"
WARNING_CLASS = "kiln-field-warning"


class FormError(ConfigError):
    """Form values that cannot become a job; `by_field` maps a field name to its problem (naming its label)."""

    def __init__(self, by_field: dict[str, str], others: list[str] = ()):
        self.by_field = dict(by_field)
        super().__init__(list(self.by_field.values()) + list(others))


@dataclass
class Form:
    components: list[gr.components.Component]          # in form_fields order
    sections: dict[str, gr.Accordion] = field(default_factory=dict)  # the folded section accordions


def settings_the_form_cannot_hold(cfg) -> list[str]:
    """The keys of `cfg` set to something the form has no field for (tables such as [[dataset.concepts]]):
    a job started or saved from the form would lose them, so the person is told when such a file is loaded."""
    return [f.name for f in fields_for(cfg.method) if f.section and (f.item_fields or f.hidden)
            and getattr(getattr(cfg, f.section), f.key) != f.default]


def form_fields(method: str) -> list[Field]:
    """The fields a method's form shows, in form order. The top-level keys are not fields: the tab is the
    method, and Kiln writes the version itself. Arrays of tables (dataset.concepts) are edited in the job file."""
    return [f for f in fields_for(method) if f.section and not f.hidden and not f.item_fields]


SECTION_TITLES = {"lora": "LoRA", "dreambooth": "DreamBooth"}


def section_title(section: str) -> str:
    return SECTION_TITLES.get(section) or section.replace("_", " ").title()


def build_form(method: str, choices_for: dict[str, Callable[[], list[str]]]) -> Form:
    """Render the method's form in the current Blocks context. `choices_for` gives suggestion lists for some
    fields by name (dataset.dir -> the workspace datasets, model.base -> the models folder)."""
    fields = form_fields(method)
    made: dict[str, gr.components.Component] = {}
    essentials = [f for name in ESSENTIALS.get(method, ()) for f in fields if f.name == name]
    with gr.Group(elem_id=f"{method}-essentials"):
        gr.Markdown(f"### Essentials\n{ESSENTIALS_HELP}")
        for f in essentials:
            made[f.name] = field_component(f, choices_for.get(f.name))
    sections = {}
    for section in SECTIONS[1:]:
        in_section = [f for f in fields if f.section == section and f.name not in made]
        if not in_section:
            continue
        with gr.Accordion(f"{section_title(section)} settings", open=False) as sections[section]:
            gr.Markdown(SECTION_HELP[section])
            for f in sorted(in_section, key=lambda f: f.advanced):  # basic ones first, schema order kept
                made[f.name] = field_component(f, choices_for.get(f.name))
    return Form([made[f.name] for f in fields], sections)


def field_info(f: Field) -> str:
    return f"{f.help} Allowed: {allowed_text(f)}." + (OUTPUT_DIR_HELP if f.name == OUTPUT_DIR else "")


def field_component(f: Field, choices: Callable[[], list[str]] | None = None) -> gr.components.Component:
    """The input for one field: its label, help (as info), default, range and choices all from the schema.
    Numbers are text boxes read by ui.numbers, so "0,0001" or "1e-4" mean what the person typed, and a wrong
    value is named, never replaced by a default."""
    common = dict(label=f.label, info=field_info(f), elem_id=element_id(f))
    if f.type == BOOL:
        return gr.Checkbox(value=f.default, **common)
    if f.type in (INT, FLOAT):
        return gr.Textbox(value=format_number(f.default), max_lines=1, **common)
    if f.type == CHOICE:
        return gr.Dropdown(choices=list(f.choices), value=f.default, **common)
    if f.type == STR_LIST:
        return gr.Textbox(value="\n".join(f.default), lines=3, placeholder="one per line", **common)
    if f.model_ref:
        suggestions = list(BUILTIN_MODELS) + (choices() if choices else [])
        return gr.Dropdown(choices=suggestions, value=f.default, allow_custom_value=True, **common)
    if choices is not None:
        return gr.Dropdown(choices=choices(), value=f.default, allow_custom_value=True, **common)
    return gr.Textbox(value=f.default, **common)


def element_id(f: Field) -> str:
    """A stable HTML id per field (browser tests and custom CSS find fields by it)."""
    return "field-" + f.name.replace(".", "-")


def values_to_dict(method: str, values: list[Any]) -> dict[str, Any]:
    """Form values (in form_fields order) -> a job dict as tomllib would return it. Numbers are read as typed;
    one that cannot be read (letters, empty, "1,000" in a decimal field) raises FormError naming its label."""
    data: dict[str, Any] = {"method": method}
    problems = {}
    for f, value in zip(form_fields(method), values, strict=True):
        if f.type in (INT, FLOAT):
            problem = number_field_problem(f, value)
            if problem:
                problems[f.name] = problem
                continue
            value = read_number(f.label, value, whole=f.type == INT)
        if f.type == STR_LIST:
            value = [line.strip() for line in (value or "").splitlines() if line.strip()]
        if value is None:
            value = ""
        data.setdefault(f.section, {})[f.key] = value
    if problems:
        raise FormError(problems)
    return data


def job_from_values(method: str, values: list[Any], base_dir: str, complete: bool = True) -> JobConfig:
    """Validate form values; raises FormError naming each wrong field by its label and why."""
    data = values_to_dict(method, values)
    try:
        return parse_job(data, source=f"<{METHOD_LABELS[method]} form>", base_dir=base_dir, complete=complete)
    except FormError:
        raise
    except ConfigError as exc:
        by_field, others = problems_by_field(method, exc.problems)
        raise FormError(by_field, others) from None


def problems_by_field(method: str, problems: list[str]) -> tuple[dict[str, str], list[str]]:
    """Config problems ("<LoRA form>: lora.rank = 0 is out of range ...") keyed by the field they name, each
    starting with the field's label; the ones about no single field (method rules) are returned apart."""
    names = {f.name: f for f in form_fields(method)}
    by_field: dict[str, str] = {}
    others = []
    for problem in problems:
        text = re.sub(r"^<[^>]*>: ", "", problem)
        named = [name for name in names if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", text)]
        if named:
            name = named[0]
            by_field.setdefault(name, f"{names[name].label}: {text}")
        else:
            others.append(text)
    return by_field, others


def unusual_values(method: str, values: list[Any]) -> dict[str, str]:
    """Allowed values far outside the usual range, by field name (asked about before Start)."""
    found = {}
    for f, value in zip(form_fields(method), values, strict=True):
        if f.type in (INT, FLOAT) and number_field_problem(f, value) is None:
            warning = unusual_value_warning(f, read_number(f.label, value, whole=f.type == INT))
            if warning:
                found[f.name] = warning
    return found


def field_feedback(f: Field, problem: str | None, warning: str | None = None) -> dict:
    """An update that puts a problem (or a warning) in the field's own info line, or clears it."""
    if problem:
        return gr.update(info=f"❌ {problem}. {field_info(f)}", elem_classes=[ERROR_CLASS])
    if warning:
        return gr.update(info=f"⚠ {warning}. {field_info(f)}", elem_classes=[WARNING_CLASS])
    return gr.update(info=field_info(f), elem_classes=[])


def number_feedback(name: str, value: Any) -> dict:
    """Feedback for one number field as soon as the person leaves it."""
    f = find_field(name)
    problem = number_field_problem(f, value)
    warning = None if problem else unusual_value_warning(f, read_number(f.label, value, whole=f.type == INT))
    return field_feedback(f, problem, warning)


def values_from_job(method: str, cfg: JobConfig) -> list[Any]:
    """A JobConfig's values for the method's form, in form_fields order (numbers as the text the form shows)."""
    values = []
    for f in form_fields(method):
        value = cfg.get(f.name)
        values.append("\n".join(value) if f.type == STR_LIST else
                      format_number(value) if f.type in (INT, FLOAT) else value)
    return values

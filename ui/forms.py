"""Method forms generated from the schema (trainer.config.FIELDS): one component per field. Each method's
essentials come first, unfolded, then the concepts editor ([[dataset.concepts]] rows, ui/concepts.py); the rest
sit in a folded accordion per section. A field added to the schema appears here with no UI change. Also the two
directions between form values and a JobConfig, and the words that put a problem next to the field it is about
(by its label)."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import gradio as gr

from trainer.config.schema import BUILTIN_MODELS
from trainer.families import FAMILIES, DetectionError, FamilySpec
from trainer.families.detect import family_of_source
from trainer.families.options import applies
from trainer.config import (BOOL, CHOICE, FLOAT, INT, SECTION_HELP, SECTIONS, STR_LIST, ConfigError, Field,
                            JobConfig, allowed_text, fields_for, find_field, parse_job)

from . import concepts
from .concepts import AS_DATASET, CONCEPT_FIELDS, CONCEPTS, MAX_CONCEPTS, SWITCH_CHOICES, row_field
from .labels import in_ui_words
from .numbers import format_number, number_field_problem, read_number, unusual_value_warning

METHOD_LABELS = {"lora": "LoRA", "dreambooth": "DreamBooth", "finetune": "Fine-tune",
                 "textual_inversion": "Textual Inversion"}
# What a person sets for every job of the method: shown first, unfolded. The rest is folded by section.
ESSENTIALS = {
    "lora": ("model.base", "model.arch", "dataset.dir", "dataset.default_caption", "lora.rank", "lora.alpha",
             "training.learning_rate", "training.epochs", "training.max_steps", "dataset.resolution"),
    "dreambooth": ("model.base", "dataset.dir", "dreambooth.instance_prompt", "dreambooth.class_prompt",
                   "dreambooth.prior_preservation", "dreambooth.use_lora", "training.learning_rate",
                   "training.epochs", "training.max_steps", "dataset.resolution"),
    "finetune": ("model.base", "dataset.dir", "dataset.caption_extension", "finetune.train_text_encoder",
                 "training.learning_rate", "training.epochs", "training.max_steps", "dataset.resolution"),
    "textual_inversion": ("model.base", "dataset.dir", "textual_inversion.token", "textual_inversion.init_word",
                          "textual_inversion.vectors", "training.learning_rate", "training.epochs",
                          "training.max_steps", "dataset.resolution"),
}
ESSENTIALS_HELP = {
    "lora": ("The settings every job needs. The trigger word of a LoRA is the instance token of the dataset folder "
             "(`10_sks dog`: \"sks\"), or the default caption for images without one."),
    "dreambooth": ("The settings every job needs. The instance prompt names your subject with a rare token (\"sks "
                   "dog\"); the class prompt says what it is (\"dog\"), for the class images that keep the model's "
                   "idea of any dog."),
    "textual_inversion": ("The settings every job needs. The token is the new word this job teaches the text "
                          "encoder (write it in prompts); the initial word is an existing word it starts from."),
}
DEFAULT_ESSENTIALS_HELP = "The settings every job needs."
# A field whose schema help speaks of another method (the UNet, for textual inversion, which trains no UNet).
METHOD_HELP = {
    ("textual_inversion", "training.learning_rate"):
        "Step size for the new token's embedding vectors, the only weights textual inversion trains (5e-4 to "
        "5e-3 is common). Kohya: learning_rate.",
}
OUTPUT_DIR = "output.dir"
OUTPUT_DIR_HELP = " Empty: the job's own output/ folder."
AS_DATASET_HELP = " Empty: as in the Dataset settings."
CONCEPT_SCALES = {"dir": 3, "caption": 2}  # widths in a concept's row (the others: 1)
CONCEPTS_TITLE = "Concepts: several folders, each with its own repeats"
CONCEPTS_HELP = (
    "Train several image folders in one job, each with its own repeats, caption and loss weight: \"my character, "
    "10 repeats\" and \"my style, 2 repeats\" (the job file lists them as `[[dataset.concepts]]`). Repeats may be "
    "fractions (`0,5` or `1.5`). The row's repeats count, never a Kohya `10_name` folder's; with no caption in the "
    "row, an uncaptioned image in a `10_name` folder is captioned `name`. With no concept the image folder above is the whole dataset; with concepts it may "
    "stay empty, or it trains besides them. At most " + str(MAX_CONCEPTS) + " concepts here; more fit in a job file.")
ERROR_CLASS = "kiln-field-error"
WARNING_CLASS = "kiln-field-warning"


class FormError(ConfigError):
    """Form values that cannot become a job; `by_field` maps a field name to its problem (naming its label)."""

    def __init__(self, by_field: dict[str, str], others: list[str] = ()):
        self.by_field = dict(by_field)
        super().__init__(list(self.by_field.values()) + list(others))


@dataclass
class ConceptEditor:
    """The [[dataset.concepts]] rows: MAX_CONCEPTS groups, those past `shown` hidden (kept in the page, so every
    row's values travel with the form's)."""
    accordion: gr.Accordion
    shown: gr.State                                  # how many rows are shown
    groups: list[gr.Group]
    folds: list[gr.Accordion]                        # each row's folded "More" keys
    components: list[gr.components.Component]       # row after row, CONCEPT_FIELDS order
    add_button: gr.Button

    def visibility(self, count: int) -> list:
        """Updates for `shown`, the row groups and the Add button with `count` rows shown."""
        return [count, *[gr.Group(visible=True if row < count else "hidden") for row in range(MAX_CONCEPTS)],
                gr.Button(interactive=count < MAX_CONCEPTS)]

    @property
    def visibility_outputs(self) -> list:
        return [self.shown, *self.groups, self.add_button]

    def after_load(self, event) -> None:
        """After `event` filled the form from a file: show the rows it holds (and open the editor when any)."""
        def show(*values):
            count = concepts.rows_to_show(list(values))
            return [*self.visibility(count), gr.Accordion(open=True) if count else gr.skip()]

        event.then(show, self.components, [*self.visibility_outputs, self.accordion], api_visibility="private",
                   show_progress="hidden")


@dataclass
class Form:
    method: str
    components: list[gr.components.Component]          # in split_values order: form_fields, then concept rows
    concepts: ConceptEditor
    sections: dict[str, gr.Accordion] = field(default_factory=dict)  # the folded section accordions

    @property
    def feedback_outputs(self) -> list:
        return [*self.components, *self.sections.values(), self.concepts.accordion, *self.concepts.folds]

    def feedback(self, problems: dict[str, str], unusual: dict[str, str]) -> list:
        """Each field's info line says what is wrong with it (or what is unusual); a folded section or concept row
        with a flagged field opens, so the problem is seen where it is. In feedback_outputs order."""
        fields = form_fields(self.method)
        flagged = {find_field(name).section for name in {**problems, **unusual}
                   if find_field(name) and name not in ESSENTIALS.get(self.method, ())}
        updates = [field_feedback(f, problems.get(f.name), unusual.get(f.name)) for f in fields]
        rows_flagged, folds_flagged = False, set()
        for number in range(1, MAX_CONCEPTS + 1):
            for f in CONCEPT_FIELDS:
                problem = problems.get(row_field(number, f).name)
                updates.append(field_feedback(row_field(number, f), problem))
                rows_flagged |= bool(problem)
                if problem and not concepts.is_plain(f):
                    folds_flagged.add(number)
        updates += [gr.Accordion(open=True) if section in flagged else gr.skip() for section in self.sections]
        updates.append(gr.Accordion(open=True) if rows_flagged else gr.skip())
        return updates + [gr.Accordion(open=True) if number in folds_flagged else gr.skip()
                          for number in range(1, MAX_CONCEPTS + 1)]


def settings_the_form_cannot_hold(cfg) -> list[tuple[str, str]]:
    """(key, what is lost) for each key of `cfg` set to something the form has no field for (a hidden key, a
    table list other than dataset.concepts, or more concepts than the editor's rows): a job started or saved from
    the form would lose it, so the person is told when such a file is loaded."""
    lost = []
    for f in fields_for(cfg.method):
        if not (f.section and (f.item_fields or f.hidden)):
            continue
        value = getattr(getattr(cfg, f.section), f.key)
        if f.name == CONCEPTS and len(value) > MAX_CONCEPTS:
            lost.append((f.name, f"has {len(value)} tables and the form holds the first {MAX_CONCEPTS}, so a job "
                                 "started or saved from here goes without the others"))
        elif f.name != CONCEPTS and value != f.default:
            lost.append((f.name, "has no field in this form, so a job started or saved from here goes without it"))
    return lost


def form_fields(method: str) -> list[Field]:
    """The fields a method's form shows, in form order. The top-level keys are not fields: the tab is the
    method, and Kiln writes the version itself. Arrays of tables are not fields: dataset.concepts has its own
    editor (the concept rows follow the fields in the form's values: split_values)."""
    return [replace(f, help=METHOD_HELP[method, f.name]) if (method, f.name) in METHOD_HELP else f
            for f in fields_for(method) if f.section and not f.hidden and not f.item_fields]


def form_family(arch: str, base: str) -> tuple[FamilySpec | None, str]:
    """The model family the form's [model] arch names, or that its base model is (detected from its configs
    or file header, without loading it); with a line saying which and how. None when unknown."""
    if arch in FAMILIES:
        return FAMILIES[arch], f"Model family: **{FAMILIES[arch].label}** (chosen)."
    try:
        found = FAMILIES[family_of_source(str(base or "").strip(), BUILTIN_MODELS)]
    except (DetectionError, OSError, KeyError):
        return None, "Model family: detected when the model loads; every field is shown."
    return found, f"Model family: **{found.label}** (detected from the base model)."


def family_visibility(method: str, family: FamilySpec | None) -> list[bool]:
    """Per form field: whether it means something for `family` (all of them while the family is unknown).
    Fields that do not apply are hidden, not silently ignored: `check` and `run` refuse them when set."""
    return [family is None or applies(f.name, family) for f in form_fields(method)]


def split_values(method: str, values: list[Any]) -> tuple[list[Any], list[Any]]:
    """The form's values (form_fields, then the concept rows) as (field values, concept row values)."""
    count = len(form_fields(method))
    if len(values) != count + MAX_CONCEPTS * concepts.ROW_SIZE:
        raise ValueError(f"the {method} form holds {count} fields and {MAX_CONCEPTS} concept rows of "
                         f"{concepts.ROW_SIZE}; got {len(values)} values")
    return list(values[:count]), list(values[count:])


SECTION_TITLES = {"lora": "LoRA", "dreambooth": "DreamBooth"}


def section_title(section: str) -> str:
    return SECTION_TITLES.get(section) or section.replace("_", " ").title()


def build_form(method: str, choices_for: dict[str, Callable[[], list[str]]]) -> Form:
    """Render the method's form in the current Blocks context. `choices_for` gives suggestion lists for some
    fields by name (dataset.dir and dataset.concepts.dir -> the workspace datasets, model.base -> the models
    folder)."""
    fields = form_fields(method)
    made: dict[str, gr.components.Component] = {}
    essentials = [f for name in ESSENTIALS.get(method, ()) for f in fields if f.name == name]
    with gr.Group(elem_id=f"{method}-essentials"):
        gr.Markdown(f"### Essentials\n{ESSENTIALS_HELP.get(method, DEFAULT_ESSENTIALS_HELP)}")
        for f in essentials:
            made[f.name] = field_component(f, choices_for.get(f.name), method=method)
    if "dataset.dir" in made and "dataset.dir" in choices_for:
        refresh_choices_on_focus(made["dataset.dir"], choices_for["dataset.dir"])
    editor = build_concept_editor(method, choices_for.get(f"{CONCEPTS}.dir"))
    sections = {}
    for section in SECTIONS[1:]:
        in_section = [f for f in fields if f.section == section and f.name not in made]
        if not in_section:
            continue
        with gr.Accordion(f"{section_title(section)} settings", open=False) as sections[section]:
            gr.Markdown(SECTION_HELP[section])
            for f in sorted(in_section, key=lambda f: f.advanced):  # basic ones first, schema order kept
                made[f.name] = field_component(f, choices_for.get(f.name), method=method)
    return Form(method, [made[f.name] for f in fields] + editor.components, editor, sections)


def refresh_choices_on_focus(component: gr.Dropdown, choices: Callable[[], list[str]]) -> None:
    """Offer the choices as they are when the person opens the field (a dataset uploaded after the page was
    built is among them); the value stays as it is."""
    component.focus(lambda: gr.Dropdown(choices=choices()), None, component, api_visibility="private",
                    show_progress="hidden")


def build_concept_editor(method: str, choices: Callable[[], list[str]] | None) -> ConceptEditor:
    """The folded concepts editor: MAX_CONCEPTS row groups (folder, repeats, caption and loss weight unfolded; the
    other keys in the row's "More" accordion), rows past the shown count hidden, Add / ↑ / ↓ / Remove."""
    groups, folds, components, moves = [], [], [], []
    with gr.Accordion(CONCEPTS_TITLE, open=False, elem_id=f"{method}-concepts") as accordion:
        gr.Markdown(CONCEPTS_HELP)
        for number in range(1, MAX_CONCEPTS + 1):
            made = {}
            with gr.Group(visible="hidden", elem_id=f"{method}-concept-{number}") as group:
                with gr.Row(equal_height=True):
                    gr.Markdown(f"**Concept {number}**")
                    buttons = [gr.Button(text, size="sm", scale=0, min_width=60,
                                         elem_id=f"{method}-concept-{number}-{key}")
                               for text, key in (("↑", "up"), ("↓", "down"), ("Remove", "remove"))]
                with gr.Row():
                    for f in sorted(filter(concepts.is_plain, CONCEPT_FIELDS),
                                    key=lambda f: concepts.PLAIN_KEYS.index(f.key)):
                        made[f.key] = concept_component(number, f, choices, CONCEPT_SCALES.get(f.key, 1))
                with gr.Accordion(f"More for concept {number}: caption file and tags, regularisation, augmentation",
                                  open=False) as fold:
                    folded = [f for f in CONCEPT_FIELDS if not concepts.is_plain(f)]
                    for on_off in (False, True):  # the text fields, then the on/off choices
                        with gr.Row():
                            for f in folded:
                                if (f.type == BOOL) == on_off:
                                    made[f.key] = concept_component(number, f, choices)
            groups.append(group)
            folds.append(fold)
            components += [made[f.key] for f in CONCEPT_FIELDS]
            moves.append(buttons)
        add_button = gr.Button("Add a concept", size="sm", elem_id=f"{method}-concept-add")
    editor = ConceptEditor(accordion, gr.State(0), groups, folds, components, add_button)

    def add(shown: int, *values):
        return editor.visibility(min(MAX_CONCEPTS, concepts.rows_to_show(list(values), shown) + 1))

    def moved(values: list[Any], shown: int) -> list:
        """The rows' new values (their problem marks cleared: they belonged to the rows' old places)."""
        fields = [row_field(number, f) for number in range(1, MAX_CONCEPTS + 1) for f in CONCEPT_FIELDS]
        return ([{**field_feedback(f, None), "value": value} for f, value in zip(fields, values)]
                + editor.visibility(concepts.rows_to_show(values, max(shown, 0))))

    def on_click(button: gr.Button, change: Callable[[list[Any], int], tuple[list[Any], int]]) -> None:
        """`change(values, shown)` gives the rows' new values and how many rows to show."""
        button.click(lambda shown, *values: moved(*change(list(values), shown)), [editor.shown, *components],
                     [*components, *editor.visibility_outputs], api_visibility="private", show_progress="hidden")

    add_button.click(add, [editor.shown, *components], editor.visibility_outputs, api_visibility="private",
                     show_progress="hidden")
    for index, (up, down, remove) in enumerate(moves):
        on_click(up, lambda values, shown, index=index: (concepts.move_row(values, index, -1, shown), shown))
        on_click(down, lambda values, shown, index=index: (concepts.move_row(values, index, 1, shown), shown))
        on_click(remove, lambda values, shown, index=index: (concepts.remove_row(values, index), shown - 1))
    return editor


def concept_component(number: int, f: Field, choices: Callable[[], list[str]] | None,
                      scale: int = 1) -> gr.components.Component:
    """Field `f` of concept row `number`: the form's component for it, with the row's element id (its label stays
    the field's: the row says its number)."""
    component = field_component(f, choices if f.required else None, elem_id=concepts.row_element_id(number, f),
                                scale=scale)
    if f.required and choices is not None:
        refresh_choices_on_focus(component, choices)
    elif f.type in (INT, FLOAT):
        component.blur(lambda value, named=row_field(number, f): number_feedback(named, value), component, component,
                       api_visibility="private", show_progress="hidden")
    return component


def field_info(f: Field) -> str:
    if concepts.is_switch(f):  # an on/off override of the [dataset] key of the same name
        return f'{f.help} "{AS_DATASET}" follows the Dataset settings.'
    if f.default is None:
        return f"{f.help} Allowed: {allowed_text(f)}.{AS_DATASET_HELP}"
    return f"{f.help} Allowed: {allowed_text(f)}." + (OUTPUT_DIR_HELP if f.name == OUTPUT_DIR else "")


def builtin_models(method: str | None = None) -> list[str]:
    """The built-in tiny models a method's form offers: those of the families that method can train (SD 3,
    Flux and Chroma train LoRAs only)."""
    return [ref for ref, arch in BUILTIN_MODELS.items() if method is None or not FAMILIES[arch].refusal(method)]


def field_component(f: Field, choices: Callable[[], list[str]] | None = None, elem_id: str | None = None,
                    scale: int | None = None, method: str | None = None) -> gr.components.Component:
    """The input for one field: its label, help (as info), default, range and choices all from the schema.
    Numbers are text boxes read by ui.numbers, so "0,0001" or "1e-4" mean what the person typed, and a wrong
    value is named, never replaced by a default. An override that may follow the Dataset settings (default None)
    offers that as a choice (on/off switches) or as the empty text."""
    common = dict(label=f.label, info=field_info(f), elem_id=elem_id or element_id(f), scale=scale)
    if concepts.is_switch(f):
        return gr.Dropdown(choices=list(SWITCH_CHOICES), value=AS_DATASET, **common)
    if f.type == BOOL:
        return gr.Checkbox(value=f.default, **common)
    if f.type in (INT, FLOAT):
        return gr.Textbox(value=format_number(f.default), max_lines=1, **common)
    if f.type == CHOICE:
        return gr.Dropdown(choices=list(f.choices), value=f.default, **common)
    if f.type == STR_LIST:
        return gr.Textbox(value="\n".join(f.default), lines=3, placeholder="one per line", **common)
    if f.model_ref:
        suggestions = builtin_models(method) + (choices() if choices else [])
        return gr.Dropdown(choices=suggestions, value=f.default, allow_custom_value=True, **common)
    if choices is not None:
        return gr.Dropdown(choices=choices(), value=f.default, allow_custom_value=True, **common)
    return gr.Textbox(value=f.default, placeholder=AS_DATASET if f.default is None else None, **common)


def element_id(f: Field) -> str:
    """A stable HTML id per field (browser tests and custom CSS find fields by it)."""
    return "field-" + f.name.replace(".", "-")


def values_to_dict(method: str, values: list[Any]) -> dict[str, Any]:
    """Form values (form_fields, then the concept rows: split_values) -> a job dict as tomllib would return it.
    Numbers are read as typed; one that cannot be read (letters, empty, "1,000" in a decimal field) raises
    FormError naming its label (a concept's as "Concept N · label"). No filled concept row: no concepts."""
    data: dict[str, Any] = {"method": method}
    field_values, concept_values = split_values(method, values)
    tables, problems = concepts.concept_tables(concept_values)
    for f, value in zip(form_fields(method), field_values, strict=True):
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
    data.setdefault("dataset", {})["concepts"] = tables
    return data


def job_from_values(method: str, values: list[Any], base_dir: str, complete: bool = True) -> JobConfig:
    """Validate form values; raises FormError naming each wrong field by its label and why."""
    data = values_to_dict(method, values)
    try:
        return parse_job(data, source=f"<{METHOD_LABELS[method]} form>", base_dir=base_dir, complete=complete)
    except FormError:
        raise
    except ConfigError as exc:
        rows = concepts.used_rows(split_values(method, values)[1])
        by_field, others = problems_by_field(method, exc.problems, rows)
        raise FormError(by_field, others) from None


def problems_by_field(method: str, problems: list[str],
                      concept_rows: Sequence[int] = ()) -> tuple[dict[str, str], list[str]]:
    """Config problems ("<LoRA form>: lora.rank = 0 is out of range ...") keyed by the field they name, each
    starting with the field's label; a problem of `dataset.concepts[N].key` by the field of the row table N came
    from (`concept_rows`, concepts.used_rows). The ones about no single field (method rules) are returned apart.
    Keys in the text are replaced by their labels (ui/labels.py)."""
    names = {f.name: f for f in form_fields(method)}
    by_field: dict[str, str] = {}
    others = []
    for problem in problems:
        text = re.sub(r"^<[^>]*>: ", "", problem)
        named = [name for name in names if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", text)]
        in_row = concepts.concept_problem(text, list(concept_rows))
        if in_row:
            by_field.setdefault(*in_row)
        elif named:
            # every field the problem names gets it (both ends of a range), in the labels the page shows
            for name in named:
                by_field.setdefault(name, in_ui_words(text))
        else:
            others.append(in_ui_words(text))
    return by_field, others


def unusual_values(method: str, values: list[Any]) -> dict[str, str]:
    """Allowed values far outside the usual range, by field name (asked about before Start)."""
    found = {}
    for f, value in zip(form_fields(method), split_values(method, values)[0], strict=True):
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


def number_feedback(name: str | Field, value: Any) -> dict:
    """Feedback for one number field (by name, or a concept row's Field) as soon as the person leaves it."""
    f = find_field(name) if isinstance(name, str) else name
    problem = number_field_problem(f, value)
    warning = None if problem else unusual_value_warning(f, read_number(f.label, value, whole=f.type == INT))
    return field_feedback(f, problem, warning)


def values_from_job(method: str, cfg: JobConfig) -> list[Any]:
    """A JobConfig's values for the method's form: form_fields, then the concept rows (numbers as the text the
    form shows)."""
    values = []
    for f in form_fields(method):
        value = cfg.get(f.name)
        values.append("\n".join(value) if f.type == STR_LIST else
                      format_number(value) if f.type in (INT, FLOAT) else value)
    return values + concepts.concept_values(cfg.dataset.concepts)

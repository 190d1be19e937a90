"""One method's tab (LoRA, DreamBooth, Textual Inversion): the preset bar, the generated form, the preflight
check, Show/Download TOML and Start. Start only writes a job through the JobManager; the worker trains."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from trainer.atomic import write_text_atomic
from trainer.config import FLOAT, INT, ConfigError, JobConfig
from trainer.jobs import JobError, JobManager
from trainer.names import BadName, path_inside

from .datasets import list_datasets
from .forms import (METHOD_LABELS, FormError, build_form, family_visibility, form_family, form_fields,
                    job_from_values, number_feedback, settings_the_form_cannot_hold, unusual_values, values_from_job)
from .job_files import job_toml, run_preflight
from .estimates import earlier_runs
from .labels import in_ui_words
from .preflight_card import card_html, check_problem, gpu_memory_gib
from .presets import PresetError, PresetRef, PresetStore, import_config_file
from .workspace import Workspace


FORM_HOLDS_DEFAULTS = ("The form holds Kiln's defaults: choose a preset and press Load to fill it, or import a "
                       "file.")
DEFAULTS_WHAT = "Kiln's defaults"
CLASS_DIR = "dreambooth.class_dir"


@dataclass
class MethodTab:
    started_job: gr.Textbox  # receives the id of a job just started (the app switches to the Jobs tab)


def problem_text(error: Exception) -> str:
    """A ConfigError's lines (each names the field by its label, and why) or another error's message, as
    Markdown. A form's problems come named by labels (forms.problems_by_field); a file's keep its keys, which
    is what the person edits there."""
    lines = error.problems if isinstance(error, ConfigError) else [str(error)]
    return "\n".join(f"- ❌ `{line}`" if "\n" not in line else f"- ❌\n```\n{line}\n```" for line in lines)


def notes_text(cfg: JobConfig) -> str:
    notes = [f"- ↻ {n}" for n in cfg.migration_notes] + [f"- ⚠ {w}" for w in cfg.warnings]
    notes += [f"- ⚠ `{key}` {lost}; run the file itself (`python -m trainer run FILE`, or `python -m trainer queue "
              "FILE` for this app's queue)" for key, lost in settings_the_form_cannot_hold(cfg)]
    return ("\n\nMigrated or worth a look:\n" + "\n".join(notes)) if notes else ""


def build_method_tab(method: str, workspace: Workspace, manager: JobManager, store: PresetStore) -> MethodTab:
    label = METHOD_LABELS[method]

    with gr.Row():
        # Custom values allowed: presets saved after the page was built (here or in another window) are real.
        # No preset is shown until one is loaded: the dropdown never names a preset the form does not hold.
        # Choosing one only selects it; Load fills the form (opening and dismissing the list changes nothing).
        preset = gr.Dropdown(choices=store.choices(method), value=None, label="Preset", scale=3,
                             allow_custom_value=True, elem_id=f"{method}-preset",
                             info="Choose, then press Load. Shipped presets are read-only; yours are marked (mine).")
        load_button = gr.Button("Load", scale=1, elem_id=f"{method}-preset-load")
        save_button = gr.Button("Save", scale=1)
        delete_button = gr.Button("Delete", scale=1)
    with gr.Row():
        new_name = gr.Textbox(label="Save as (name)", scale=3)
        save_as_button = gr.Button("Save as", scale=1)
        import_file = gr.File(label="Import a job TOML or a Kohya_ss JSON config", file_types=[".toml", ".json"],
                              scale=3)
    preset_message = gr.Markdown(FORM_HOLDS_DEFAULTS, elem_id=f"{method}-preset-message")

    def dataset_choices() -> list[str]:
        return [str(p) for p in list_datasets(workspace.datasets_dir)]

    form = build_form(method, {"dataset.dir": dataset_choices, "dataset.concepts.dir": dataset_choices,
                               "model.base": workspace.model_choices})
    fields = form.components  # the schema's fields, then the concept rows
    family_note = gr.Markdown(elem_id=f"{method}-family")
    no_change = [gr.skip()] * len(fields)
    field_list = form_fields(method)
    names = [f.name for f in field_list]
    with gr.Row():
        check_button = gr.Button("Check (preflight)")
        show_button = gr.Button("Show TOML")
        start_button = gr.Button(f"Start {label} training", variant="primary")
    run_message = gr.Markdown()
    card = gr.HTML(elem_id=f"{method}-preflight-card")
    # The card says where class images go (by default a shared cache outside the workspace): one click keeps them in
    # the workspace instead (only tabs whose form has the Class image folder).
    keep_classes_button = gr.Button("Keep class images in this workspace", size="sm", visible=False,
                                    elem_id=f"{method}-keep-class-images")
    with gr.Accordion("Full report and resolved TOML", open=False):
        toml_file = gr.File(label="Download TOML", interactive=False)
        report = gr.Textbox(label="Preflight / TOML", lines=12, max_lines=40, interactive=False)
    started_job = gr.Textbox(visible=False)
    # What the form was last filled with ({"what": words, "values": the fields as then}): a Load over edits made
    # since asks first; the second Load with the same edits and the same preset goes ahead.
    held = gr.State({"what": DEFAULTS_WHAT, "values": _comparable([c.value for c in fields])})
    # The API's unconditional load (a hidden button: scripts and tests load a preset without the page's question).
    load_now_button = gr.Button("Load now", visible=False)
    # The unusual values the person was last warned about: pressing Start again with the same ones goes ahead.
    warned = gr.State(None)

    def validated(values: tuple[Any, ...], complete: bool) -> JobConfig:
        return job_from_values(method, list(values), base_dir=str(workspace.root), complete=complete)

    def refreshed_dropdown(selected: str | None) -> gr.Dropdown:
        return gr.Dropdown(choices=store.choices(method), value=selected)

    def load_preset(key: str):
        try:
            cfg = store.load(PresetRef.parse(key))
        except (ConfigError, PresetError) as exc:
            return [f"Could not load preset `{key}`:\n{problem_text(exc)}", *no_change]
        if cfg.method != method:
            return [f"`{key}` is a {METHOD_LABELS.get(cfg.method, cfg.method)} preset: open it in that tab.",
                    *no_change]
        return [f"Loaded preset `{PresetRef.parse(key).name}`: the form holds its settings.{notes_text(cfg)}",
                *values_from_job(method, cfg)]

    def load_asked(key: str, last: dict, asked: str | None, *values):
        """Load, unless the form has edits made since it was last filled: then say so, and load on the second
        press (same preset, same edits)."""
        current = _comparable(values)
        edited = current != last["values"]
        request = f"{key}|{current!r}"
        if edited and asked != request and key:
            name = key.partition(":")[2]
            return [f"⚠ The form has edits that are not in any preset (it held {last['what']} before them). Press "
                    f"Load again to replace them with `{name}`, or Save as first to keep them.", *no_change,
                    last, request]
        loaded = load_preset(key)
        if not loaded[0].startswith("Loaded preset"):
            return [*loaded, last, None]
        return [*loaded, {"what": f"preset `{key.partition(':')[2]}`", "values": _comparable(loaded[1:])}, None]

    def holds_after(what, values) -> dict:
        return {"what": what, "values": _comparable(values)}

    def chosen(key: str | None, last: dict):
        """Choosing (or dismissing) the list changes nothing in the form; the message says what it holds."""
        name = (key or "").partition(":")[2]
        if not name:
            return f"The form holds {last['what']}."
        return f"The form holds {last['what']}. Press Load to fill it with `{name}`."

    def import_config(path: str | None):
        if not path:
            return ["Choose a .toml or .json file first.", *no_change, gr.skip(), gr.skip()]
        try:
            cfg = import_config_file(Path(path), workspace.root, method)
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            return [f"Could not import `{Path(path).name}`:\n{problem_text(exc)}", *no_change, gr.skip(), gr.skip()]
        if cfg.method != method:
            return [f"`{Path(path).name}` is a {METHOD_LABELS.get(cfg.method, cfg.method)} config: import it in "
                    "that tab.", *no_change, gr.skip(), gr.skip()]
        # The dropdown no longer names a preset: the form holds the imported file.
        values = values_from_job(method, cfg)
        return [f"The form holds the settings imported from `{Path(path).name}` (not a saved preset: Save as "
                f"keeps them).{notes_text(cfg)}", *values, gr.Dropdown(value=None),
                holds_after(f"the settings imported from `{Path(path).name}`", values)]

    def save_preset(key: str, *values):
        try:
            ref = store.save(PresetRef.parse(key), validated(values, complete=False))
        except (ConfigError, PresetError) as exc:
            return f"Not saved:\n{problem_text(exc)}", gr.skip(), gr.skip()
        return (f"Saved preset `{ref.name}`: the form holds its settings.", refreshed_dropdown(ref.key),
                holds_after(f"preset `{ref.name}`", values))

    def save_preset_as(name: str, *values):
        try:
            ref = store.save_as(name, validated(values, complete=False))
        except (ConfigError, PresetError) as exc:
            return f"Not saved:\n{problem_text(exc)}", gr.skip(), gr.skip()
        return (f"Saved new preset `{ref.name}`: the form holds its settings.", refreshed_dropdown(ref.key),
                holds_after(f"preset `{ref.name}`", values))

    def delete_preset(key: str):
        try:
            ref = PresetRef.parse(key)
            store.delete(ref)
        except (PresetError, OSError) as exc:
            return f"Not deleted: {exc}", gr.skip()
        return f"Deleted preset `{ref.name}`.", refreshed_dropdown(None)

    def show_toml(*values):
        try:
            cfg = validated(values, complete=False)
        except ConfigError as exc:
            return problem_text(exc), "", None
        text = job_toml(cfg)
        try:
            download = path_inside(workspace.scratch_dir, cfg.output.name, "output name", ".toml")
        except BadName as exc:
            return problem_text(exc), text, None
        write_text_atomic(download, text)
        return "TOML below; the download holds the same.", text, str(download)

    def preflight(*values):
        try:
            cfg = validated(values, complete=True)
        except ConfigError as exc:
            return problem_text(exc), "", ""
        gpu = cfg.training.gpu_memory_gib or gpu_memory_gib()  # the "My GPU" field, else the card found here
        ok, text = run_preflight(job_toml(cfg), workspace.scratch_dir, None if cfg.training.gpu_memory_gib else gpu)
        return (("✅ The check passed." if ok else "❌ The check found a problem (see the end of the report)."),
                text, card_html(cfg, ok, text, earlier_runs(manager.list_jobs()), gpu, workspace.root))

    def start(last_warned, *values):
        try:
            cfg = validated(values, complete=True)
            unusual = unusual_values(method, list(values))
            if unusual and last_warned != sorted(unusual.values()):
                lines = "\n".join(f"- ⚠ {w}" for w in unusual.values())
                return (f"Not started yet: some values are far from what people use:\n{lines}\n\nPress Start "
                        "again to train with them anyway.", gr.skip(), sorted(unusual.values()))
            text = job_toml(cfg)
            # The same gate as Check (and as `trainer run`'s start), before a job exists: an empty image folder
            # or a missing model never becomes a job that fails in its log.
            ok, report = run_preflight(text, workspace.scratch_dir)
            if not ok:
                reason = check_problem(report) or report.strip().splitlines()[-1:] or ["see Check's report"]
                reason = reason if isinstance(reason, str) else reason[0]
                return (f"Not started: the check refused this job:\n- ❌ {in_ui_words(reason)}", gr.skip(),
                        None)
            job_id = manager.create(text, name=cfg.output.name, parsed=cfg.to_dict())  # validated once, passed on
            manager.start_pending()
        except (ConfigError, JobError) as exc:
            return f"Not started:\n{problem_text(exc)}", gr.skip(), None
        return f"Job `{job_id}` created; it runs in the background (see the Jobs tab).", job_id, None

    def mark_fields(*values):
        """Each field's info line says what is wrong with it (or what is unusual), after Check/TOML/Start."""
        try:
            validated(values, complete=True)
            problems = {}
        except FormError as exc:
            problems = exc.by_field
        return form.feedback(problems, unusual_values(method, list(values)))

    prefix = method
    preset.focus(refreshed_dropdown, preset, preset, api_visibility="private")
    asked_load = gr.State(None)
    form.concepts.after_load(load_now_button.click(load_preset, preset, [preset_message, *fields],
                                                  api_name=f"{prefix}_load_preset"))
    form.concepts.after_load(load_button.click(load_asked, [preset, held, asked_load, *fields],
                                               [preset_message, *fields, held, asked_load],
                                               api_visibility="private"))
    # choosing (or opening and dismissing) the list only says what Load would do
    preset.input(chosen, [preset, held], preset_message, api_visibility="private", show_progress="hidden")
    form.concepts.after_load(import_file.upload(import_config, import_file, [preset_message, *fields, preset, held],
                                                api_name=f"{prefix}_import"))
    save_button.click(save_preset, [preset, *fields], [preset_message, preset, held],
                      api_name=f"{prefix}_save_preset")
    save_as_button.click(save_preset_as, [new_name, *fields], [preset_message, preset, held],
                         api_name=f"{prefix}_save_preset_as")
    delete_button.click(delete_preset, preset, [preset_message, preset], api_name=f"{prefix}_delete_preset")
    show_button.click(show_toml, fields, [run_message, report, toml_file], api_name=f"{prefix}_toml")
    check_button.click(preflight, fields, [run_message, report, card], api_name=f"{prefix}_check")
    if CLASS_DIR in names:
        class_dir_box, output_name_box = fields[names.index(CLASS_DIR)], fields[names.index("output.name")]

        def offer_workspace(card_text: str, folder: str):
            return gr.Button(visible="shared cache" in (card_text or "") and not (folder or "").strip())

        def keep_in_workspace(name: str):
            folder = workspace.root / "class-images" / ((name or "").strip() or "class-images")
            return str(folder), gr.Button(visible=False), (f"Class image folder set to `{folder}`: the class images "
                                                           "are kept there. Check again to see the new plan.")

        card.change(offer_workspace, [card, class_dir_box], keep_classes_button, api_visibility="private",
                    show_progress="hidden")
        keep_classes_button.click(keep_in_workspace, output_name_box, [class_dir_box, keep_classes_button,
                                                                      run_message], api_visibility="private")
    start_button.click(start, [warned, *fields], [run_message, started_job, warned], api_name=f"{prefix}_start")
    gr.on([show_button.click, check_button.click, start_button.click], mark_fields, fields, form.feedback_outputs,
          api_visibility="private", show_progress="hidden")
    for f, component in zip(field_list, fields):
        if f.type in (INT, FLOAT):
            component.blur(lambda value, field_=f: number_feedback(field_, value), component, component,
                           api_visibility="private", show_progress="hidden")
    if "model.arch" in names and "model.base" in names:
        # The family is picked (model.arch) or detected from the base model; fields it has no use for hide.
        arch, base = fields[names.index("model.arch")], fields[names.index("model.base")]
        field_components = fields[:len(field_list)]

        def show_family_fields(arch_value, base_value):
            family, note = form_family(arch_value, base_value)
            return [note, *[gr.update(visible=v) for v in family_visibility(method, family)]]

        for component in (arch, base):
            component.change(show_family_fields, [arch, base], [family_note, *field_components],
                             api_visibility="private", show_progress="hidden")
    if "lora" in form.sections and "dreambooth.use_lora" in names:
        # DreamBooth: the LoRA settings apply only to DreamBooth-LoRA.
        use_lora = fields[names.index("dreambooth.use_lora")]
        form.sections["lora"].visible = bool(use_lora.value)
        use_lora.change(lambda on: gr.Accordion(visible=bool(on)), use_lora, form.sections["lora"],
                        api_visibility="private")
    return MethodTab(started_job)


def _comparable(values) -> list[str]:
    """Field values as text, so the browser's copy and the server's compare equal when nothing was edited."""
    return ["" if v is None else str(v) for v in values]

"""The Dataset tab's captioning tools: basic, BLIP and WD14 captions for a workspace dataset, run as a caption job
through the job manager (detached, cancellable, its progress in the Jobs tab and here).

The inputs are generated from `trainer.caption.CaptionOptions`: one input per field, its type and default from the
dataclass, its help text and its method group ("basic", "blip and wd14", "blip", "wd14", edits) from the
`python -m trainer caption` parser, so an option added there appears here with no UI change.
`trainer.caption` imports no torch; the work happens in the worker (`python -m trainer caption --job ...`)."""
from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from trainer.caption import CaptionError, CaptionOptions, caption_job_toml
from trainer.caption.cli import add_caption_parser
from trainer.caption.options import METHODS, MODES, options_from_mapping
from trainer.jobs import FINAL_STATES, JobError, JobManager

from .caption_gate import caption_gate
from .job_view import progress_html

# Fields the panel fills itself: the folder is the chosen dataset; the tag report has its own view in the tab.
PANEL_FIELDS = ("dir", "report", "only")  # "only": the review grid's "regenerate this one"
DEFAULT_METHOD = "basic"
GENERAL_GROUP = "general"
POLL_SECONDS = 1.0
METHOD_NAMES = {"basic": "Basic", "blip": "BLIP", "wd14": "WD14", "florence2": "Florence-2",
                "joycaption": "JoyCaption", "qwen-vl": "Qwen-VL"}
LABELS = {"from_name": "Caption from name", "replace_underscores": "Underscores to spaces",
          "exclude_tags": "Excluded tags", "batch_size": "Batch size", "min_length": "Minimum length",
          "max_length": "Maximum length", "text": "Same text for every image", "clean": "Clean up tags",
          "rating": "Rating tag first", "mode": "Existing captions", "model": "Model (hub id or local folder)",
          "edit_kept": "Edit kept captions", "trigger": "Trigger word", "trigger_replaces": "Trigger replaces",
          "drop": "Phrases to drop", "max_tokens": "Maximum new tokens", "quantize": "Load in 8/4 bits",
          "prompt": "Your own instruction", "template": "Focus"}


@dataclass(frozen=True)
class CaptionField:
    name: str                            # the CaptionOptions field (and the [caption] key of a job file)
    label: str
    type: type                           # bool, int, float or str
    default: Any
    help: str
    choices: tuple[str, ...] | None      # a fixed set of values (method, mode, from_name)
    group: str                           # the parser's argument group: "general", "edits ...", "basic", ...
    methods: tuple[str, ...] | None      # the methods the field is for; None: every method


def caption_fields(options_class: type = CaptionOptions) -> list[CaptionField]:
    """The panel's inputs, in CaptionOptions order, described from the dataclass and the CLI parser."""
    helps, choices, groups = _parser_facts()
    defaults = options_class(dir="")
    made = []
    for field in dataclasses.fields(options_class):
        if field.name in PANEL_FIELDS:
            continue
        default = getattr(defaults, field.name)
        if field.name == "method":
            default = DEFAULT_METHOD  # None means "report only", which the tag-frequency view already shows
        kind = type(default) if isinstance(default, (bool, int, float)) else str
        group = groups.get(field.name, GENERAL_GROUP)
        made.append(CaptionField(field.name, LABELS.get(field.name, field.name.replace("_", " ").capitalize()),
                                 kind, default, helps.get(field.name, ""),
                                 choices.get(field.name), group, _group_methods(group)))
    return made


def _parser_facts() -> tuple[dict[str, str], dict[str, tuple[str, ...]], dict[str, str]]:
    """Help text, choices and group title per option name, read from `python -m trainer caption`'s parser."""
    parser = add_caption_parser(argparse.ArgumentParser(prog="kiln").add_subparsers())
    helps: dict[str, str] = {}
    choices: dict[str, tuple[str, ...]] = {"mode": MODES}
    mode_help = []
    for action in parser._actions:
        if action.dest == "mode" and action.const in MODES:  # --skip-existing / --overwrite / --append
            mode_help.append(f"{action.const}: {action.help}")
        elif action.help and action.help is not argparse.SUPPRESS:
            helps.setdefault(action.dest, action.help[0].upper() + action.help[1:])
        if action.choices and action.dest != "mode":
            choices[action.dest] = tuple(action.choices)
    if mode_help:
        helps["mode"] = "An image that already has a caption — " + "; ".join(mode_help) + "."
    helps.setdefault("method", "basic: names, fixed text and edits (no model); blip: short sentences; wd14: booru "
                               "tags; florence2, joycaption, qwen-vl: natural language for Flux / SD 3 / Chroma.")
    groups = {}
    for group in parser._action_groups:
        title = group.title or GENERAL_GROUP
        if title in ("options", "positional arguments", "optional arguments"):
            title = GENERAL_GROUP
        for action in group._group_actions:
            groups.setdefault(action.dest, title)
    return helps, choices, groups


def _group_methods(group: str) -> tuple[str, ...] | None:
    """'blip and wd14' -> ('blip', 'wd14'); a group that does not name methods is for all of them."""
    parts = [part for part in re.split(r"\s*(?:,|\band\b)\s*", group.strip()) if part]
    return tuple(parts) if parts and all(part in METHODS for part in parts) else None


def options_from_values(dataset_dir: Path, fields: list[CaptionField], values: list[Any]) -> CaptionOptions:
    """Form values (in `fields` order) -> validated CaptionOptions for `dataset_dir`. Inputs of other methods
    (hidden in the page) keep their defaults, so the job file says only what this run uses. Raises CaptionError
    naming the option and why."""
    if len(values) != len(fields):
        raise CaptionError(f"expected {len(fields)} caption option values, got {len(values)}")
    method = dict(zip((f.name for f in fields), values)).get("method") or DEFAULT_METHOD
    data: dict[str, Any] = {"dir": str(dataset_dir), "report": False}
    for field, value in zip(fields, values):
        if field.methods is not None and method not in field.methods:
            continue
        if field.type in (int, float):
            if value is None or value == "":
                continue  # an emptied number: the default applies
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise CaptionError(f"{field.label} = {value!r} is not a number") from None
            if field.type is int and isinstance(value, float) and value.is_integer():
                value = int(value)  # browsers send whole numbers as floats
        elif field.type is bool:
            value = bool(value)
        else:
            value = "" if value is None else str(value)
        data[field.name] = value
    try:
        options = options_from_mapping(data, "caption form")
        options.validate()
    except CaptionError as exc:
        raise CaptionError(_with_labels(str(exc), fields)) from None
    return options


def _with_labels(message: str, fields: list[CaptionField]) -> str:
    """The option checks speak in command-line flags (`--from-name`); the page shows labels ('Caption from
    name'). Flags of fields the page shows become their quoted labels."""
    labels = {f.name: f.label for f in fields}

    def label(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        return f"'{labels[name]}'" if name in labels else match.group(0)

    message = re.sub(r"--method (\w+)", r"the \1 method", message)
    return re.sub(r"--([a-z][a-z-]*)(?: TEXT\b)?", label, message)


def build_caption_panel(manager: JobManager, dataset: gr.Dropdown,
                        dataset_path: Callable[[str | None], Path | None],
                        refresh: Callable[[str | None], tuple],
                        views: list[gr.components.Component]) -> tuple[list[CaptionField], list]:
    """Render the panel in the current Blocks context. `dataset` is the tab's dataset chooser, `dataset_path`
    turns its value into a folder (None when it is not a workspace dataset), `refresh(choice)` gives the values
    of `views` (summary, gallery, caption table, tag table), refreshed when the caption job ends. Returns the
    fields and their inputs (the review grid's "Regenerate" uses the options chosen here)."""
    fields = caption_fields()
    with gr.Accordion("Caption the dataset (basic, BLIP, WD14, Florence-2, JoyCaption, Qwen-VL)", open=True,
                      elem_id="caption-panel"):
        gr.Markdown("Writes a `.txt` caption beside each image of the chosen dataset as a **caption job**: it runs "
                    "in the background (see the Jobs tab, where it can also be stopped). Images are never changed; "
                    "edits (prefix, suffix, find/replace, clean-up) apply to every caption written, and to kept ones only "
                    "with *Edit kept*; overwrite asks first and keeps a backup. "
                    "The model methods download their default model once; offline, give a local folder. "
                    "Florence-2, JoyCaption and Qwen-VL write natural language (what Flux, SD 3 and Chroma read); "
                    "see docs/captioning.md for which fits which model.")
        components: dict[str, gr.components.Component] = {}
        group_boxes: list[tuple[gr.Column, tuple[str, ...] | None]] = []
        titles = list(dict.fromkeys(f.group for f in fields))
        for title in titles:
            in_group = [f for f in fields if f.group == title]
            methods = in_group[0].methods
            visible = methods is None or DEFAULT_METHOD in methods
            heading = ("Options" if title == GENERAL_GROUP else
                       ", ".join(METHOD_NAMES.get(m, m) for m in methods) + " options" if methods
                       else title[0].upper() + title[1:])
            with gr.Column(visible=visible) as box:
                gr.Markdown(f"**{heading}**")
                # Text and number inputs in one row, tick boxes in their own: beside wide inputs they shrink to
                # slivers (a Checkbox has no minimum width).
                for kinds in ([f for f in in_group if f.type is not bool], [f for f in in_group if f.type is bool]):
                    if kinds:
                        with gr.Row():
                            for f in kinds:
                                components[f.name] = _component(f)
            group_boxes.append((box, methods))
        with gr.Row():
            caption_button = gr.Button("Caption", variant="primary", elem_id="caption-start")
            status_button = gr.Button("Refresh progress")
            stop_button = gr.Button("Stop captioning", variant="stop")
        message = gr.Markdown(elem_id="caption-message")
        job_id = gr.Textbox(label="Caption job", interactive=False, elem_id="caption-job")
        progress = gr.HTML(elem_id="caption-progress")
        timer = gr.Timer(POLL_SECONDS, active=False)

    inputs = [components[f.name] for f in fields]
    asked = gr.State(None)  # the overwrite the person was last asked about; the same press again goes ahead

    def start(choice: str | None, last_asked, *values):
        folder = dataset_path(choice)
        if folder is None:
            return "❌ Choose a dataset of the workspace first.", gr.skip(), gr.skip(), gr.skip(), None
        try:
            options = options_from_values(folder, fields, list(values))
        except CaptionError as exc:
            return f"❌ Not started: {exc}", gr.skip(), gr.skip(), gr.skip(), None
        blocked = caption_gate(folder, options)  # before a job exists or a model loads
        if blocked:
            return f"❌ Not started: {blocked}", gr.skip(), gr.skip(), gr.skip(), None
        replaced = existing_captions(folder, options.caption_extension) if options.mode == "overwrite" else 0
        if replaced and last_asked != [str(folder), replaced]:
            return (f"⚠ Overwrite replaces the existing captions of {replaced} image(s) in `{folder.name}`. A copy "
                    f"of each is kept in `{folder.name}/.kiln-caption-backup/`. Press Caption again to go ahead.",
                    gr.skip(), gr.skip(), gr.skip(), [str(folder), replaced])
        try:
            new_id = manager.create(caption_job_toml(options), name=f"caption {folder.name}")
            manager.start_pending()
            job = manager.get(new_id)
        except JobError as exc:
            return f"❌ Could not create the caption job: {exc}", gr.skip(), gr.skip(), gr.skip(), None
        where = ("it is queued and starts when the running job ends" if job.get("state") == "queued"
                 else f"it is {job.get('state')}")
        return (f"Created caption job `{new_id}` ({options.method}, {options.mode}) for dataset `{folder.name}`; "
                f"{where}. Its progress shows below and in the Jobs tab; the captions here refresh when it ends.",
                new_id, progress_html(job), gr.Timer(active=True), None)

    def poll(current: str | None, choice: str | None):
        """Progress of the caption job; when it has ended, its counts and the refreshed dataset view."""
        if not current:
            return "No caption job yet.", "", gr.Timer(active=False), *[gr.skip()] * len(views)
        try:
            job = manager.get(current)
        except JobError as exc:
            return f"❌ {exc}", "", gr.Timer(active=False), *[gr.skip()] * len(views)
        state = job.get("state")
        if state not in FINAL_STATES:
            return gr.skip(), progress_html(job), gr.skip(), *[gr.skip()] * len(views)
        return (finished_message(job), progress_html(job), gr.Timer(active=False), *refresh(choice))

    def stop(current: str | None):
        if not current:
            return "No caption job to stop."
        try:
            manager.stop(current)
        except JobError as exc:
            return f"❌ {exc}"
        return f"Asked caption job `{current}` to stop after the current batch; captions written so far stay."

    def show_method_options(method: str):
        return [gr.Column(visible=methods is None or method in methods) for _, methods in group_boxes]

    components["method"].change(show_method_options, components["method"], [box for box, _ in group_boxes],
                                api_visibility="private")
    caption_button.click(start, [dataset, asked, *inputs], [message, job_id, progress, timer, asked],
                         api_name="dataset_caption")
    status_button.click(poll, [job_id, dataset], [message, progress, timer, *views],
                        api_name="dataset_caption_status")
    timer.tick(poll, [job_id, dataset], [message, progress, timer, *views], api_visibility="private",
               show_progress="hidden")
    stop_button.click(stop, job_id, message, api_name="dataset_caption_stop")
    return fields, inputs


def existing_captions(folder: Path, extension: str) -> int:
    """How many caption files (not hidden, e.g. not the backups) the dataset holds."""
    return sum(1 for p in folder.rglob(f"*{extension}")
               if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def finished_message(job: dict) -> str:
    """One line for an ended caption job: its state, the counts, and the first failures with their reasons."""
    state, job_id = job.get("state"), job.get("id")
    counts = ", ".join(f"{key} {job[key]}" for key in ("captioned", "skipped", "failed") if job.get(key) is not None)
    icon = {"done": "✅", "stopped": "⏹"}.get(state, "❌")
    lines = [f"{icon} Caption job `{job_id}` {state}" + (f": {counts}." if counts else ".")
             + (" The captions below are refreshed." if state != "failed" else "")]
    if state == "failed" and job.get("error"):
        lines.append(f"Error: {str(job['error']).splitlines()[-1]}")
    failures = job.get("failures") or []
    lines += [f"- {item.get('path')}: {item.get('reason')}" for item in failures[:10] if isinstance(item, dict)]
    if len(failures) > 10:
        lines.append(f"- … and {len(failures) - 10} more (see the job's log in the Jobs tab)")
    return "\n".join(lines)


def _component(f: CaptionField) -> gr.components.Component:
    # min_width: a row of many options wraps instead of squeezing each into a sliver
    common = dict(label=f.label, info=f.help or None, elem_id="caption-" + f.name.replace("_", "-"), min_width=220)
    if f.choices:
        return gr.Radio(choices=list(f.choices), value=f.default, **common)
    if f.type is bool:
        return gr.Checkbox(value=f.default, **common)
    if f.type is int:
        return gr.Number(value=f.default, precision=0, minimum=0, step=1, **common)
    if f.type is float:
        return gr.Number(value=f.default, minimum=0.0, maximum=1.0 if "threshold" in f.name else None, step=0.05,
                         **common)
    placeholder = {"model": "empty: the method's default model"}.get(f.name)
    return gr.Textbox(value=f.default, placeholder=placeholder, **common)

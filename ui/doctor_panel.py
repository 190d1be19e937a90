"""The dataset doctor on the Dataset tab: `python -m trainer doctor --json` in a subprocess (the UI never
imports the engine), shown as findings with their files and advice. It changes nothing unless the user ticks
the confirmation and presses "Move duplicates aside"."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import gradio as gr

from .caption_review import review_links
from .job_files import PROJECT_ROOT
from .labels import in_ui_words

DOCTOR_TIMEOUT_S = 600
_LISTED = 12
CAPTION_FINDINGS = ("empty-caption", "long-caption", "no-trigger")


def run_doctor(folder: Path, resolution: int, trigger: str, move_duplicates: bool = False) -> tuple[bool, str]:
    """(ok, markdown) for the dataset at `folder`."""
    command = [sys.executable, "-m", "trainer", "doctor", str(folder), "--json", "--resolution", str(resolution)]
    if trigger.strip():
        command += ["--trigger", trigger.strip()]
    if move_duplicates:
        command.append("--move-duplicates")
    try:
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=DOCTOR_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"❌ the doctor took longer than {DOCTOR_TIMEOUT_S} s and was stopped"
    if done.returncode != 0:
        error = next((line for line in done.stderr.splitlines() if line.startswith("kiln: error:")),
                     done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "the doctor failed")
        return False, f"❌ {error.removeprefix('kiln: error: ')}"
    moved = next((line for line in done.stderr.splitlines() if line.startswith("kiln: moved")), "")
    return True, report_markdown(json.loads(done.stdout), moved.removeprefix("kiln: "))


def report_markdown(report: dict, moved: str = "") -> str:
    lines = [f"**{report['images']} images** at {report['resolution']} px. "
             + "; ".join(f"`{c['subset']}`: {c['images']} × {c['repeats']} repeats = {c['per_epoch']} per epoch"
                         for c in report["concepts"])]
    if moved:
        lines.append(f"✅ {moved} (to a `-duplicates` folder beside the dataset).")
    for path, reason in report["skipped"]:
        lines.append(f"- skipped: `{path}`: {reason}")
    if not report["findings"]:
        lines.append("✅ No problems found.")
    for finding in report["findings"]:
        lines.append(f"\n**⚠️ {in_ui_words(finding['message'])}**")
        shown = finding["files"][:_LISTED]
        # Caption findings name images: each links to it in the review grid, where it can be fixed.
        lines += review_links(shown) if finding["kind"] in CAPTION_FINDINGS else [f"- `{name}`" for name in shown]
        if len(finding["files"]) > _LISTED:
            lines.append(f"- … and {len(finding['files']) - _LISTED} more")
        lines.append(f"\n*What to do:* {in_ui_words(finding['advice'])}")  # the fields by their labels
    return "\n".join(lines)


def build_doctor_panel(dataset: gr.Dropdown, dataset_path: Callable[[str | None], Path | None]) -> None:
    with gr.Accordion("Dataset doctor: check the dataset before training", open=False):
        gr.Markdown("Finds near-duplicates, blurry and too-small images, extreme aspect ratios, sideways EXIF, "
                    "captions that are empty, too long or miss the trigger word, likely tag typos and unbalanced "
                    "concepts. It changes nothing unless you ask.")
        with gr.Row():
            trigger = gr.Textbox(label="Trigger word", placeholder="sks", scale=2,
                                 info="Every caption should contain it (leave empty to skip).")
            resolution = gr.Number(label="Training resolution", value=512, precision=0, minimum=64, maximum=4096,
                                   scale=1)
        examine = gr.Button("Examine dataset")
        with gr.Row():
            confirm = gr.Checkbox(label="Yes, move all but one image of each duplicate group out of the dataset",
                                  value=False)
            move = gr.Button("Move duplicates aside", variant="stop")
        result = gr.Markdown(elem_id="doctor-report")

    def check(choice: str | None, trigger_text: str, size, move_them: bool = False) -> str:
        folder = dataset_path(choice)
        if folder is None:
            return "Choose a dataset first."
        try:
            size = int(size)
        except (TypeError, ValueError):
            return "❌ Training resolution: enter a whole number of pixels, e.g. 512."
        return run_doctor(folder, size, trigger_text or "", move_them)[1]

    def move_aside(choice: str | None, trigger_text: str, size, confirmed: bool) -> str:
        if not confirmed:
            return "Tick the confirmation first: nothing was moved."
        return check(choice, trigger_text, size, move_them=True)

    examine.click(check, [dataset, trigger, resolution], result, api_name="dataset_doctor")
    move.click(move_aside, [dataset, trigger, resolution, confirm], result, api_name="dataset_move_duplicates")

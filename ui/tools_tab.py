"""The Tools tab: inspect, resize, merge and extract LoRAs, and compare a job's checkpoints in a grid. Every tool
runs as `python -m trainer lora ...` / `python -m trainer grid ...` in a subprocess (the UI never imports
torch); the tab shows what the command printed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dataclasses import dataclass
from typing import Callable

import gradio as gr

from trainer.jobs import JobManager

from .tool_paths import (WEIGHTS_SUFFIX, ToolPathError, derived_name, job_loras, jobs_with_checkpoints, keep_upload,
                         tool_output, tools_dir)
from .workspace import Workspace

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TOOL_TIMEOUT_S = 3600  # a grid on a real model takes minutes; the tools themselves seconds
DYNAMIC_NONE = "none (fixed rank)"
# Defaults a tool accepts as they stand (an empty number field reached the tools as 0: "less than minimum 1").
DEFAULT_GRID_STEPS, DEFAULT_RESIZE_RANK, DEFAULT_MERGE_RANK, DEFAULT_DYNAMIC_VALUE = 20, 8, 16, 0.9
_NOISE_PREFIXES = ("Failed to load CPU gemm", "[transformers]")


@dataclass
class ToolsTab:
    refresh: Callable[[], gr.Dropdown]  # the grid's job list, filled afresh (the app calls it when the tab opens)
    grid_job: gr.Dropdown


class ToolInputError(ValueError):
    """A form value the command cannot take; the message names the field."""


def _path(value: str, label: str, required: bool = True) -> list[str]:
    value = (value or "").strip()
    if not value:
        if required:
            raise ToolInputError(f"{label} is empty: give a file path")
        return []
    return [value]


def _flag(name: str, value: str) -> list[str]:
    """`name value` for an optional path, nothing when it is empty."""
    value = (value or "").strip()
    return [name, value] if value else []


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def inspect_command(file: str, base: str = "") -> list[str]:
    return ["lora", "inspect", *_path(file, "LoRA file"), *_flag("--base", base)]


def resize_command(file: str, out: str, rank, dynamic: str = DYNAMIC_NONE, value=None, force=False) -> list[str]:
    args = ["lora", "resize", *_path(file, "LoRA file"), "--out", *_path(out, "Output file")]
    if rank:
        args += ["--rank", str(int(rank))]
    if dynamic and dynamic != DYNAMIC_NONE:
        if value in (None, ""):
            raise ToolInputError(f"Dynamic value is empty: {dynamic} needs a number")
        args += ["--dynamic", dynamic, str(value)]
    elif not rank:
        raise ToolInputError("Rank is empty: give a rank, or choose a dynamic method")
    return args + (["--force"] if force else [])


def merge_command(loras: str, out: str, into: str = "", weights: str = "", rank=None, force=False) -> list[str]:
    files = _lines(loras)
    if not files:
        raise ToolInputError("LoRA files is empty: give one path per line")
    args = ["lora", "merge", *files, "--out", *_path(out, "Output file"), *_flag("--into", into)]
    if weights.strip():
        args += ["--weights", weights.strip()]
    if rank and not (into or "").strip():
        args += ["--rank", str(int(rank))]
    return args + (["--force"] if force else [])


def extract_command(base: str, tuned: str, rank, out: str, force=False) -> list[str]:
    if not rank:
        raise ToolInputError("Rank is empty: give the rank of the extracted LoRA")
    return ["lora", "extract", "--base", *_path(base, "Base checkpoint"), "--tuned", *_path(tuned, "Tuned checkpoint"),
            "--rank", str(int(rank)), "--out", *_path(out, "Output file")] + (["--force"] if force else [])


def grid_command(target: str, prompts: str, strengths: str, seeds: str, steps=None, out: str = "",
                 force=False) -> list[str]:
    args = ["grid", *_path(target, "Job or folder")]
    if _lines(prompts):
        args += ["--prompts", *_lines(prompts)]
    if strengths.strip():
        args += ["--strengths", strengths.strip()]
    if seeds.strip():
        args += ["--seeds", seeds.strip()]
    if steps:
        args += ["--steps", str(int(steps))]
    if out.strip():
        args += ["--out", out.strip()]
    return args + (["--force"] if force else [])


def run_tool(args: list[str], timeout_s: float = TOOL_TIMEOUT_S) -> tuple[bool, str]:
    """(ok, what it printed) of `python -m trainer ARGS`."""
    try:
        done = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=timeout_s, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return False, f"the tool took longer than {timeout_s:.0f} s and was stopped"
    messages = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(_NOISE_PREFIXES)]
    text = "\n".join([done.stdout.rstrip(), *messages]).strip()
    return done.returncode == 0, text


def _runner(make_command):
    def run(*values):
        try:
            args = make_command(*values)
        except (ToolInputError, ToolPathError) as e:
            return f"error: {e}"
        ok, text = run_tool(args)
        return text if ok else f"failed:\n{text}"
    return run


def _lora_picker(label: str, workspace: Workspace, manager: JobManager, multiselect: bool = False):
    """A dropdown of the jobs' saved weights (any other path may be typed) and an upload beside it; an upload is
    kept in the workspace and chosen in the dropdown."""
    with gr.Row():
        picker = gr.Dropdown(label=label, choices=job_loras(manager), value=[] if multiselect else None,
                             multiselect=multiselect, allow_custom_value=True, scale=3,
                             info="Your jobs' saved LoRAs (newest job first), or type a path")
        upload = gr.UploadButton("Upload LoRA files…" if multiselect else "Upload a LoRA…",
                                 file_types=[WEIGHTS_SUFFIX], file_count="multiple" if multiselect else "single",
                                 scale=1)

    def uploaded(files, chosen):
        files = [files] if isinstance(files, str) else files or []
        kept = [keep_upload(workspace, f) for f in files]
        if not kept:
            return gr.skip()
        value = [*(chosen or []), *kept] if multiselect else kept[0]
        return gr.Dropdown(choices=job_loras(manager) + [(Path(k).name + " (uploaded)", k) for k in kept],
                           value=value)

    upload.upload(uploaded, [upload, picker], picker, api_visibility="private")
    picker.focus(lambda chosen: gr.Dropdown(choices=job_loras(manager), value=chosen), picker, picker,
                 api_visibility="private", show_progress="hidden")
    return picker


def build_tools_tab(manager: JobManager, workspace: Workspace) -> ToolsTab:
    where = tools_dir(workspace)
    gr.Markdown(f"LoRA tools. Each runs `python -m trainer lora ...` (or `grid`). Outputs go beside the source LoRA "
                f"when it is a job's output, else to `{where}`; a bare file name goes there too, and a path must lie "
                "inside the workspace. An existing file is never replaced unless *Replace* is ticked.")
    with gr.Accordion("Compare checkpoints (grid)", open=True):
        with gr.Row():
            job = gr.Dropdown(label="Job", choices=jobs_with_checkpoints(manager), value=None,
                              allow_custom_value=True, elem_id="tools-grid-job", scale=3,
                              info="Jobs with saved checkpoints (or a job folder, or a folder of LoRA files)")
            refresh = gr.Button("Refresh", scale=1)
        prompts = gr.Textbox(label="Prompts (one per line; empty: the job's sample prompts)", lines=3)
        with gr.Row():
            strengths = gr.Textbox(label="Strengths", value="0.5,0.75,1.0")
            seeds = gr.Textbox(label="Seeds", value="42")
            steps = gr.Number(label="Steps", value=DEFAULT_GRID_STEPS, precision=0, minimum=1,
                              elem_id="tools-grid-steps")
            grid_out = gr.Textbox(label="Output folder (empty: grid/ beside the checkpoints)")
        grid_force = gr.Checkbox(label="Replace an existing grid")
        grid_button = gr.Button("Make grid", variant="primary")
        grid_log = gr.Textbox(label="Result", lines=3)
        grid_image = gr.Image(label="Grid", type="filepath", interactive=False)

        def resolve(target: str) -> str:
            target = (target or "").strip()
            known = {j["id"] for j in manager.list_jobs()}
            return str(manager.job_dir(target)) if target in known else target

        def make_grid(target, prompt_text, strength_text, seed_text, step_count, out, force):
            try:
                folder = resolve(target)
                sources = [path for _, path in job_loras(manager) if folder and Path(path).is_relative_to(folder)]
                out = tool_output(out, "Output folder", workspace, manager, sources, "grid", folder=True) \
                    if (out or "").strip() else ""
                args = grid_command(folder, prompt_text, strength_text, seed_text, step_count, out, force=force)
            except (ToolInputError, ToolPathError) as e:
                return f"error: {e}", None
            ok, text = run_tool(args)
            image = text.split("kiln: wrote ", 1)[1].split(" and ", 1)[0] if ok and "kiln: wrote " in text else None
            return (text if ok else f"failed:\n{text}"), image

        grid_button.click(make_grid, [job, prompts, strengths, seeds, steps, grid_out, grid_force],
                          [grid_log, grid_image])
        refresh.click(lambda: gr.Dropdown(choices=jobs_with_checkpoints(manager)), None, job,
                      api_visibility="private")
    with gr.Accordion("Inspect", open=False):
        file = _lora_picker("LoRA file", workspace, manager)
        base = gr.Textbox(label="Base checkpoint (optional: lists keys it would not load)")
        inspect_out = gr.Textbox(label="Report", lines=12)
        gr.Button("Inspect").click(_runner(inspect_command), [file, base], inspect_out)
    with gr.Accordion("Resize", open=False):
        resize_file = _lora_picker("LoRA file", workspace, manager)
        with gr.Row():
            resize_out = gr.Textbox(label="Output file", info="empty: NAME-rankN.safetensors beside the source")
            rank = gr.Number(label="Rank (the largest, with a dynamic method)", value=DEFAULT_RESIZE_RANK,
                             precision=0, minimum=1, elem_id="tools-resize-rank")
            dynamic = gr.Dropdown(label="Dynamic", choices=[DYNAMIC_NONE, "sv_ratio", "sv_fro", "sv_cumulative"],
                                  value=DYNAMIC_NONE)
            value = gr.Number(label="Dynamic value", value=DEFAULT_DYNAMIC_VALUE)
            resize_force = gr.Checkbox(label="Replace")
        resize_log = gr.Textbox(label="Result", lines=8, elem_id="tools-resize-result")

        def resize(source, out, rank_value, dynamic_value, number, force):
            out = tool_output(out, "Output file", workspace, manager, [source or ""],
                              derived_name(source or "", f"rank{int(rank_value or 0)}"))
            return resize_command(source or "", out, rank_value, dynamic_value, number, force)

        gr.Button("Resize", elem_id="tools-resize").click(
            _runner(resize), [resize_file, resize_out, rank, dynamic, value, resize_force], resize_log,
            api_name="tools_resize")
    with gr.Accordion("Merge", open=False):
        loras = _lora_picker("LoRA files", workspace, manager, multiselect=True)
        with gr.Row():
            merge_out = gr.Textbox(label="Output file", info="empty: NAME-merged.safetensors beside the first LoRA")
            into = gr.Textbox(label="Into checkpoint (empty: merge into one LoRA)")
            weights = gr.Textbox(label="Weights (comma-separated)")
            merge_rank = gr.Number(label="Rank (LoRA output)", value=DEFAULT_MERGE_RANK, precision=0, minimum=1)
            merge_force = gr.Checkbox(label="Replace")
        merge_log = gr.Textbox(label="Result", lines=6)

        def merge(chosen, out, into_value, weight_text, rank_value, force):
            chosen = [chosen] if isinstance(chosen, str) else list(chosen or [])
            out = tool_output(out, "Output file", workspace, manager, chosen,
                              derived_name(chosen[0] if chosen else "", "merged"))
            return merge_command("\n".join(chosen), out, into_value, weight_text, rank_value, force)

        gr.Button("Merge").click(_runner(merge), [loras, merge_out, into, weights, merge_rank, merge_force],
                                 merge_log, api_name="tools_merge")
    with gr.Accordion("Extract", open=False):
        with gr.Row():
            extract_base, tuned = gr.Textbox(label="Base checkpoint"), gr.Textbox(label="Tuned checkpoint")
            extract_rank = gr.Number(label="Rank", value=16, precision=0, minimum=1)
            extract_out = gr.Textbox(label="Output file", info=f"empty: NAME-extracted.safetensors in {where}")
            extract_force = gr.Checkbox(label="Replace")
        extract_log = gr.Textbox(label="Result", lines=6)

        def extract(base_value, tuned_value, rank_value, out, force):
            out = tool_output(out, "Output file", workspace, manager, [],
                              derived_name(tuned_value or "", "extracted"))
            return extract_command(base_value, tuned_value, rank_value, out, force)

        gr.Button("Extract").click(_runner(extract), [extract_base, tuned, extract_rank, extract_out,
                                                      extract_force], extract_log, api_name="tools_extract")
    return ToolsTab(refresh=lambda: gr.Dropdown(choices=jobs_with_checkpoints(manager)), grid_job=job)

"""The Tools tab: inspect, resize, merge and extract LoRAs, and compare a job's checkpoints in a grid. Every tool
runs as `python -m trainer lora ...` / `python -m trainer grid ...` in a subprocess (the UI never imports
torch); the tab shows what the command printed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gradio as gr

from trainer.jobs import JobManager

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TOOL_TIMEOUT_S = 3600  # a grid on a real model takes minutes; the tools themselves seconds
DYNAMIC_NONE = "none (fixed rank)"
_NOISE_PREFIXES = ("Failed to load CPU gemm", "[transformers]")


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
        except ToolInputError as e:
            return f"error: {e}"
        ok, text = run_tool(args)
        return text if ok else f"failed:\n{text}"
    return run


def build_tools_tab(manager: JobManager) -> None:
    gr.Markdown("LoRA tools. Each runs `python -m trainer lora ...` (or `grid`); outputs never replace an "
                "existing file unless *Replace* is ticked.")
    with gr.Accordion("Compare checkpoints (grid)", open=True):
        with gr.Row():
            job = gr.Dropdown(label="Job", choices=[j["id"] for j in manager.list_jobs()], allow_custom_value=True,
                              info="A job id, a job folder, a job .toml, or a folder of LoRA files", scale=3)
            refresh = gr.Button("Refresh", scale=1)
        prompts = gr.Textbox(label="Prompts (one per line; empty: the job's sample prompts)", lines=3)
        with gr.Row():
            strengths = gr.Textbox(label="Strengths", value="0.5,0.75,1.0")
            seeds = gr.Textbox(label="Seeds", value="42")
            steps = gr.Number(label="Steps", value=None, precision=0, minimum=1)
        grid_force = gr.Checkbox(label="Replace an existing grid")
        grid_button = gr.Button("Make grid", variant="primary")
        grid_log = gr.Textbox(label="Result", lines=3)
        grid_image = gr.Image(label="Grid", type="filepath", interactive=False)

        def resolve(target: str) -> str:
            target = (target or "").strip()
            known = {j["id"] for j in manager.list_jobs()}
            return str(manager.job_dir(target)) if target in known else target

        def make_grid(target, prompt_text, strength_text, seed_text, step_count, force):
            try:
                args = grid_command(resolve(target), prompt_text, strength_text, seed_text, step_count, force=force)
            except ToolInputError as e:
                return f"error: {e}", None
            ok, text = run_tool(args)
            image = text.split("kiln: wrote ", 1)[1].split(" and ", 1)[0] if ok and "kiln: wrote " in text else None
            return (text if ok else f"failed:\n{text}"), image

        grid_button.click(make_grid, [job, prompts, strengths, seeds, steps, grid_force], [grid_log, grid_image])
        refresh.click(lambda: gr.Dropdown(choices=[j["id"] for j in manager.list_jobs()]), None, job,
                      api_visibility="private")
    with gr.Accordion("Inspect", open=False):
        with gr.Row():
            file = gr.Textbox(label="LoRA file")
            base = gr.Textbox(label="Base checkpoint (optional: lists keys it would not load)")
        inspect_out = gr.Textbox(label="Report", lines=12)
        gr.Button("Inspect").click(_runner(inspect_command), [file, base], inspect_out)
    with gr.Accordion("Resize", open=False):
        with gr.Row():
            resize_file, resize_out = gr.Textbox(label="LoRA file"), gr.Textbox(label="Output file")
        with gr.Row():
            rank = gr.Number(label="Rank (the largest, with a dynamic method)", precision=0, minimum=1)
            dynamic = gr.Dropdown(label="Dynamic", choices=[DYNAMIC_NONE, "sv_ratio", "sv_fro", "sv_cumulative"],
                                  value=DYNAMIC_NONE)
            value = gr.Number(label="Dynamic value")
            resize_force = gr.Checkbox(label="Replace")
        resize_log = gr.Textbox(label="Result", lines=8)
        gr.Button("Resize").click(_runner(resize_command), [resize_file, resize_out, rank, dynamic, value,
                                                            resize_force], resize_log)
    with gr.Accordion("Merge", open=False):
        loras = gr.Textbox(label="LoRA files (one per line)", lines=3)
        with gr.Row():
            merge_out = gr.Textbox(label="Output file")
            into = gr.Textbox(label="Into checkpoint (empty: merge into one LoRA)")
            weights = gr.Textbox(label="Weights (comma-separated)")
            merge_rank = gr.Number(label="Rank (LoRA output)", precision=0, minimum=1)
            merge_force = gr.Checkbox(label="Replace")
        merge_log = gr.Textbox(label="Result", lines=6)
        gr.Button("Merge").click(_runner(merge_command), [loras, merge_out, into, weights, merge_rank, merge_force],
                                 merge_log)
    with gr.Accordion("Extract", open=False):
        with gr.Row():
            extract_base, tuned = gr.Textbox(label="Base checkpoint"), gr.Textbox(label="Tuned checkpoint")
            extract_rank = gr.Number(label="Rank", value=16, precision=0, minimum=1)
            extract_out = gr.Textbox(label="Output file")
            extract_force = gr.Checkbox(label="Replace")
        extract_log = gr.Textbox(label="Result", lines=6)
        gr.Button("Extract").click(_runner(extract_command), [extract_base, tuned, extract_rank, extract_out,
                                                              extract_force], extract_log)

"""The Jobs tab: the queue and every job, and the chosen job live — progress, loss and LR charts, samples over
time, log, outputs — with stop / pause / resume / save now / sample now / Continue, rename and delete. A timer
polls the job folders and runs the queue; all state is in the folders, so closing the browser or restarting the
app loses nothing."""
from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from trainer.jobs import JobError, JobManager

from .evaluation_panel import DEFAULT_IMAGES, DEFAULT_STEPS, evaluation_view, queue_evaluation
from .job_view import (JOB_TABLE_HEADERS, RAW, SMOOTHED, VALIDATION, job_table, loss_frame, lr_frame, output_files,
                       progress_html, sample_images)
from .labels import in_ui_words

POLL_SECONDS = 1.5
METHODS = {"resume": "unpause", "requeue": "continue_job"}  # button (API) names kept; the manager's words
LOG_LINES = 40
CONTINUE = "Continue"  # the one word for carrying on from the last save, here and in every message
CONTINUE_LABEL = "Continue from save"  # a new run from the saved state of a stopped or failed job
UNPAUSE_LABEL = "Unpause"  # carries on a paused run (the worker's "resume" command); Continue restarts a stopped one
# Which job controls a state allows (Continue has its own rule: a saved state, manager.can_continue).
CONTROLS = ("stop", "pause", "resume", "save_now", "sample_now")
ALLOWED_IN = {"stop": ("queued", "running", "paused"), "pause": ("running",), "resume": ("paused",),
              "save_now": ("running",), "sample_now": ("running",)}
TRAINING_ONLY = ("save_now", "sample_now")  # a caption job has nothing to save or sample
NO_JOB = "<div class='kiln-progress'>Choose a job (click its row in the table).</div>"
# The log box shows its newest lines: Gradio's autoscroll does not act on a box that is not interactive.
SCROLL_LOG_TO_END = ("() => { const box = document.querySelector('#job-log textarea');"
                     " if (box) { box.scrollTop = box.scrollHeight; } }")


@dataclass
class JobsTab:
    job_choice: gr.Dropdown


def build_jobs_tab(manager: JobManager, serve_files: Callable[[list[str]], None] = lambda paths: None) -> JobsTab:
    """`serve_files` lets the web server hand out a job's own files that lie outside the workspace (an output
    folder on another disk)."""
    table = gr.Dataframe(headers=JOB_TABLE_HEADERS, label="Jobs (newest first): click a row to choose the job",
                         interactive=False, elem_id="job-table")
    with gr.Row():
        # No job is chosen until the person chooses one (or starts one): Stop must never hit a job by default.
        job_choice = gr.Dropdown(label="Job", choices=_job_ids(manager), value=None, scale=4, elem_id="job-choice",
                                 allow_custom_value=True)  # jobs made after the page was built are real
        refresh_button = gr.Button("Refresh", scale=1)
    progress = gr.HTML(NO_JOB, elem_id="job-progress")
    with gr.Row():  # nothing is enabled until a job is chosen; then what its state allows
        stop_button = gr.Button("Stop (saves first)", variant="stop", interactive=False, elem_id="job-stop")
        pause_button = gr.Button("Pause", interactive=False, elem_id="job-pause")
        resume_button = gr.Button(UNPAUSE_LABEL, interactive=False, elem_id="job-unpause")
        save_button = gr.Button("Save now", interactive=False, elem_id="job-save-now")
        sample_button = gr.Button("Sample now", interactive=False, elem_id="job-sample-now")
        continue_button = gr.Button(CONTINUE_LABEL, interactive=False, elem_id="job-continue", min_width=220)
    control_buttons = [stop_button, pause_button, resume_button, save_button, sample_button]
    control_message = gr.Markdown()
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="value", color="series", title="Loss (raw, smoothed, validation)",
                                height=260, x_title="step", y_title="loss", elem_id="job-loss-plot", scale=1,
                                color_map={RAW: "#9bb7d4", SMOOTHED: "#1f4e9c", VALIDATION: "#d9822b"})
        lr_plot = gr.LinePlot(x="step", y="lr", title="Learning rate", height=260, x_title="step",
                              y_title="learning rate", elem_id="job-lr-plot", scale=1)
    samples = gr.Gallery(label="Samples over time (newest first; click one to enlarge)", columns=6, height=340,
                         elem_id="job-samples", allow_preview=True, preview=False, object_fit="contain",
                         show_label=True)
    log = gr.Textbox(label="Log (newest lines at the bottom)", lines=10, max_lines=20, interactive=False,
                     autoscroll=True, elem_id="job-log")
    # Gradio's × on a file only takes it off this list (the file stays on disk): the label says so.
    outputs = gr.File(label="Outputs (the final file first; × hides a file from this list, the file stays on disk)",
                      file_count="multiple", interactive=False, elem_id="job-outputs")
    with gr.Accordion("Evaluation: which checkpoint is best (FID, KID, IS, CLIP score, validation loss)",
                      open=False):
        with gr.Row():
            evaluation_images = gr.Number(label="Images per checkpoint", value=DEFAULT_IMAGES, precision=0,
                                          minimum=2)
            evaluation_steps = gr.Number(label="Denoising steps", value=DEFAULT_STEPS, precision=0, minimum=1)
            evaluate_button = gr.Button("Evaluate this job's checkpoints", variant="primary",
                                        elem_id="job-evaluate")
            evaluation_refresh = gr.Button("Reload evaluation")
        evaluation_progress = gr.HTML(elem_id="job-evaluation-progress")
        evaluation_table = gr.Markdown(elem_id="job-evaluation")
        evaluation_charts = gr.Gallery(label="Metrics over steps", columns=4, height=240, allow_preview=True)
        evaluation_job = gr.State(None)
        evaluation_timer = gr.Timer(POLL_SECONDS, active=False)
    with gr.Accordion("Rename or delete this job", open=False):
        with gr.Row():
            title = gr.Textbox(label="Title", placeholder="a name to know the job by", scale=3)
            rename_button = gr.Button("Rename", scale=1)
            delete_button = gr.Button("Delete job and its files…", variant="stop", scale=1)
        with gr.Row(visible=False) as confirm_row:
            confirm_text = gr.Markdown()
            confirm_button = gr.Button("Yes, delete it", variant="stop", elem_id="job-delete-confirm")
            cancel_button = gr.Button("Cancel")
    # What was last sent for the slow-to-send parts, so a tick only re-sends them when they changed.
    shown = gr.State({})

    def view(job_id: str | None, last: dict):
        # the queue runs in the app's own thread (QueueScheduler), not on this timer; errors name fields by label
        jobs = [{**j, "error": in_ui_words(j["error"])} if j.get("error") else j for j in manager.list_jobs()]
        rows = job_table(jobs)
        # The table is re-sent only when it changed: a re-drawn table under the pointer swallows a row click.
        table_update = gr.skip() if last.get("rows") == rows else rows
        unchanged = [gr.skip()] * 3  # charts and samples
        none_allowed = [gr.Button(interactive=False)] * (len(CONTROLS) + 1)
        if not job_id:
            return (table_update, NO_JOB, *unchanged, "", gr.skip(), *none_allowed, {"rows": rows})
        try:  # each job's status is read once per tick: the chosen one comes from the list
            job = next((j for j in jobs if j["id"] == job_id), None) or manager.get(job_id)
        except JobError as exc:
            return (table_update, f"<div class='kiln-progress'>{exc}</div>", *unchanged, "", gr.skip(),
                    *none_allowed, {"rows": rows})
        if job.get("state") is None:  # unreadable, or a linked folder: shown as damaged, nothing read through it
            return (table_update, progress_html(job), *unchanged, "", gr.skip(), *none_allowed, {"rows": rows})
        frame = loss_frame(job["job_dir"])
        # only the job's own files (a link planted in samples/ or output/ leads nowhere)
        images = [(path, caption) for path, caption in sample_images(job) if manager.own_files(job, [path])]
        files = manager.own_files(job, output_files(job))
        serve_files([path for path, _ in images] + files)
        signature = {"job": job_id, "points": len(frame), "samples": images, "outputs": files}
        same = {key: last.get(key) == signature[key] and last.get("job") == job_id for key in signature}
        can_continue = manager.can_continue(job)[0]
        signature["rows"] = rows
        return (table_update, progress_html(job, manager.latest_saved_step(job_id), can_continue),
                gr.skip() if same["points"] else _chart(gr.LinePlot, frame, job),
                gr.skip() if same["points"] else _chart(gr.LinePlot, lr_frame(job["job_dir"]), job),
                gr.skip() if same["samples"] else images, manager.log_tail(job_id, LOG_LINES),
                gr.skip() if same["outputs"] else files,
                *[gr.Button(interactive=allowed) for allowed in allowed_controls(job)],
                gr.Button(interactive=can_continue), signature)

    def send(command: str):
        def act(job_id: str | None):
            if not job_id:
                return "Choose a job first (click its row in the table)."
            try:
                if command == "continue_job":
                    allowed, reason = manager.can_continue(manager.get(job_id))
                    if not allowed:
                        return f"❌ `{job_id}` has nothing to {CONTINUE.lower()}: {reason}."
                getattr(manager, command)(job_id)
            except JobError as exc:
                return f"❌ {exc}"
            return f"Sent `{CONTINUE if command == 'continue_job' else command}` to `{job_id}`."
        return act

    def choose_row(event: gr.SelectData):
        row = event.row_value or []
        return gr.Dropdown(choices=_job_ids(manager), value=row[0]) if row else gr.skip()

    def rename(job_id: str | None, new_title: str):
        if not job_id:
            return "Choose a job first."
        try:
            return f"Renamed `{job_id}` to “{manager.rename(job_id, new_title)}”."
        except JobError as exc:
            return f"❌ {exc}"

    def ask_delete(job_id: str | None):
        if not job_id:
            return gr.Row(visible=False), "", "Choose a job first."
        return (gr.Row(visible=True), f"Delete job `{job_id}` with its outputs, samples and saved states? "
                "This cannot be undone.", "")

    def delete(job_id: str | None):
        if not job_id:
            return "Choose a job first.", gr.skip(), gr.Row(visible=False)
        try:
            manager.delete(job_id)
        except JobError as exc:
            return f"❌ Not deleted: {exc}", gr.skip(), gr.Row(visible=False)
        return (f"Deleted job `{job_id}` and its files.", gr.Dropdown(choices=_job_ids(manager), value=None),
                gr.Row(visible=False))

    view_outputs = [table, progress, loss_plot, lr_plot, samples, log, outputs, *control_buttons, continue_button,
                    shown]
    gr.Timer(POLL_SECONDS).tick(view, [job_choice, shown], view_outputs, api_visibility="private",
                                show_progress="hidden")
    job_choice.change(view, [job_choice, gr.State({})], view_outputs, api_name="job_view")

    def show_evaluation(job_id: str | None):
        if not job_id:
            return "", []
        try:
            job = manager.get(job_id)
        except JobError as exc:
            return f"❌ {exc}", []
        text, charts = evaluation_view(Path(job["job_dir"]))
        return text, [(path, caption) for path, caption in charts if manager.own_files(job, [path])]

    evaluation_views = [evaluation_table, evaluation_charts]
    job_choice.change(show_evaluation, job_choice, evaluation_views, api_visibility="private")
    evaluation_refresh.click(show_evaluation, job_choice, evaluation_views, api_name="job_evaluation")

    def evaluate(job_id: str | None, images, steps):
        message, evaluation_id = queue_evaluation(manager, job_id, images, steps)
        shown = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(message, quote=False))  # an HTML box
        return f"<div>{shown}</div>", evaluation_id, gr.Timer(active=evaluation_id is not None)

    def evaluation_progress_view(evaluation_id: str | None, job_id: str | None):
        """The evaluation job's progress; when it has ended, the timer stops and the table is reloaded."""
        if not evaluation_id:
            return "", gr.Timer(active=False), gr.skip(), gr.skip()
        try:
            evaluation = manager.get(evaluation_id)
        except JobError as exc:
            return f"❌ {exc}", gr.Timer(active=False), gr.skip(), gr.skip()
        bar = progress_html(evaluation, None, False)
        if evaluation.get("state") in ("done", "failed", "stopped"):
            return (bar, gr.Timer(active=False), *show_evaluation(job_id))
        return bar, gr.skip(), gr.skip(), gr.skip()

    evaluate_button.click(evaluate, [job_choice, evaluation_images, evaluation_steps],
                          [evaluation_progress, evaluation_job, evaluation_timer], api_name="job_evaluate")
    evaluation_timer.tick(evaluation_progress_view, [evaluation_job, job_choice],
                          [evaluation_progress, evaluation_timer, *evaluation_views], api_visibility="private",
                          show_progress="hidden")
    log.change(None, None, None, js=SCROLL_LOG_TO_END)
    table.select(choose_row, None, job_choice, api_visibility="private")
    refresh_button.click(lambda: gr.Dropdown(choices=_job_ids(manager)), None, job_choice, api_name="job_list")
    for button, command in ((stop_button, "stop"), (pause_button, "pause"), (resume_button, "resume"),
                            (save_button, "save_now"), (sample_button, "sample_now"),
                            (continue_button, "requeue")):
        button.click(send(METHODS.get(command, command)), job_choice, control_message, api_name=f"job_{command}")
    rename_button.click(rename, [job_choice, title], control_message, api_name="job_rename")
    delete_button.click(ask_delete, job_choice, [confirm_row, confirm_text, control_message],
                        api_visibility="private")
    confirm_button.click(delete, job_choice, [control_message, job_choice, confirm_row], api_name="job_delete")
    cancel_button.click(lambda: gr.Row(visible=False), None, confirm_row, api_visibility="private")
    return JobsTab(job_choice)


def allowed_controls(job: dict) -> list[bool]:
    """Whether each of CONTROLS can act on this job now (a done job allows none; a queued one only Stop)."""
    state = job.get("state")
    captioning = job.get("phase") == "captioning"
    return [state in ALLOWED_IN[name] and not (captioning and name in TRAINING_ONLY) for name in CONTROLS]


MIN_STEP_AXIS = 10  # an x-axis this long or longer gets whole-number ticks


def _chart(plot, frame, job: dict):
    """No data is sent as an empty plot: a plot first drawn from zero rows keeps an empty colour legend, and its
    lines stay invisible after the points arrive. The step axis spans the whole run (at least MIN_STEP_AXIS
    steps), so its ticks are whole steps from the first point on, never 0.5."""
    if not len(frame):
        return None
    total = job.get("total_steps") if isinstance(job.get("total_steps"), int) else 0
    last = int(frame["step"].max()) if "step" in frame else 0
    return plot(value=frame, x_lim=[0, max(total, last, MIN_STEP_AXIS)])


def _job_ids(manager: JobManager) -> list[str]:
    return [job["id"] for job in manager.list_jobs()]

"""The Jobs tab: the queue and every job, and the chosen job live — progress, loss plot, samples, log, outputs —
with stop / pause / resume / save now / sample now. A timer polls the job folders and runs the queue; all state
is in the folders, so closing the browser or restarting the app loses nothing."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from trainer.jobs import JobError, JobManager

from .job_view import JOB_TABLE_HEADERS, job_table, loss_frame, output_files, progress_html, sample_images

POLL_SECONDS = 1.5
METHODS = {"resume": "unpause", "requeue": "continue_job"}  # button (API) names kept; the manager's words
LOG_LINES = 40


@dataclass
class JobsTab:
    job_choice: gr.Dropdown


def build_jobs_tab(manager: JobManager, serve_files: Callable[[list[str]], None] = lambda paths: None) -> JobsTab:
    """`serve_files` lets the web server hand out a job's own files that lie outside the workspace (an output
    folder on another disk)."""
    table = gr.Dataframe(headers=JOB_TABLE_HEADERS, label="Jobs (newest first)", interactive=False)
    with gr.Row():
        job_choice = gr.Dropdown(label="Job", choices=_job_ids(manager), scale=4, elem_id="job-choice",
                                 allow_custom_value=True)  # jobs made after the page was built are real
        refresh_button = gr.Button("Refresh", scale=1)
    progress = gr.HTML(elem_id="job-progress")
    with gr.Row():
        stop_button = gr.Button("Stop (saves first)", variant="stop")
        pause_button = gr.Button("Pause")
        resume_button = gr.Button("Resume")
        save_button = gr.Button("Save now")
        sample_button = gr.Button("Sample now")
        continue_button = gr.Button("Continue (from last save)")
    control_message = gr.Markdown()
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="loss", title="Loss", height=260, scale=2)
        samples = gr.Gallery(label="Latest samples", columns=2, height=260, scale=1, elem_id="job-samples")
    log = gr.Textbox(label="Log (last lines)", lines=10, max_lines=20, interactive=False, autoscroll=True)
    outputs = gr.File(label="Outputs", file_count="multiple", interactive=False, elem_id="job-outputs")
    # What was last sent for the slow-to-send parts, so a tick only re-sends them when they changed.
    shown = gr.State({})

    def view(job_id: str | None, last: dict):
        jobs = manager.list_jobs()  # the queue runs in the app's own thread (QueueScheduler), not on this timer
        rows = job_table(jobs)
        if not job_id:
            return rows, "<div class='kiln-progress'>Choose a job.</div>", gr.skip(), gr.skip(), "", gr.skip(), last
        try:  # each job's status is read once per tick: the chosen one comes from the list
            job = next((j for j in jobs if j["id"] == job_id), None) or manager.get(job_id)
        except JobError as exc:
            return rows, f"<div class='kiln-progress'>{exc}</div>", gr.skip(), gr.skip(), "", gr.skip(), last
        frame = loss_frame(job["job_dir"])
        images, files = sample_images(job), manager.own_files(job, output_files(job))
        serve_files(images + files)
        signature = {"job": job_id, "points": len(frame), "samples": images, "outputs": files}
        same = {key: last.get(key) == signature[key] and last.get("job") == job_id for key in signature}
        return (rows, progress_html(job), gr.skip() if same["points"] else frame,
                gr.skip() if same["samples"] else images, manager.log_tail(job_id, LOG_LINES),
                gr.skip() if same["outputs"] else files, signature)

    def send(command: str):
        def act(job_id: str | None):
            if not job_id:
                return "Choose a job first."
            try:
                if command == "stop":
                    manager.stop(job_id)
                else:
                    getattr(manager, command)(job_id)
            except JobError as exc:
                return f"❌ {exc}"
            return f"Sent `{command}` to `{job_id}`."
        return act

    view_outputs = [table, progress, loss_plot, samples, log, outputs, shown]
    gr.Timer(POLL_SECONDS).tick(view, [job_choice, shown], view_outputs, api_visibility="private",
                                show_progress="hidden")
    job_choice.change(view, [job_choice, gr.State({})], view_outputs, api_name="job_view")
    refresh_button.click(lambda: gr.Dropdown(choices=_job_ids(manager)), None, job_choice, api_name="job_list")
    for button, command in ((stop_button, "stop"), (pause_button, "pause"), (resume_button, "resume"),
                            (save_button, "save_now"), (sample_button, "sample_now"),
                            (continue_button, "requeue")):
        button.click(send(METHODS.get(command, command)), job_choice, control_message, api_name=f"job_{command}")
    return JobsTab(job_choice)


def _job_ids(manager: JobManager) -> list[str]:
    return [job["id"] for job in manager.list_jobs()]

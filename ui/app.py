"""Kiln's page: Dataset, LoRA, DreamBooth, Textual Inversion, Jobs and Tools tabs. The UI writes TOML jobs into
the job manager and watches job folders; it never trains (and never imports torch) itself."""
from __future__ import annotations

import time
from urllib.parse import urlsplit
from pathlib import Path

import gradio as gr
import gradio.networking
import httpx
from starlette.middleware import Middleware

from trainer.config import METHODS
from trainer.jobs import JobManager, QueueScheduler

from .caption_review import REVIEW_CSS, REVIEW_HEAD
from .dataset_tab import FOLDER_PATHS_HEAD, build_dataset_tab, dataset_names
from .forms import METHOD_LABELS
from .host_check import AllowedHosts, HostCheck
from .jobs_tab import build_jobs_tab
from .login_limit import LoginRateLimit
from .method_tab import build_method_tab
from .presets import PresetStore
from .tools_tab import build_tools_tab
from .workspace import Workspace

JOBS_TAB = "jobs"
DEFAULT_MAX_UPLOAD_MB = 200
# A field with a problem is outlined and its info line (which then starts with the problem) turns red.
PAGE_CSS = """
.kiln-field-error { box-shadow: inset 0 0 0 2px #d33 !important; }
.kiln-field-error .info-text { color: #b91c1c !important; font-weight: 600; }
.kiln-field-warning { box-shadow: inset 0 0 0 2px #d90 !important; }
.kiln-field-warning .info-text { color: #92400e !important; }
.kiln-preflight-card { border: 1px solid #cbd5e1; border-radius: 8px; padding: 10px 14px; line-height: 1.6; }
.kiln-card-steps { font-size: 1.25em; }
.kiln-card-warning { color: #92400e; }
/* class-image thumbnails in a row that wraps (Gradio's HTML styles made each <img> a block: one tall column) */
.kiln-class-images { display: flex; flex-wrap: wrap; gap: 4px; align-items: flex-start; }
.kiln-class-images img { display: block; width: auto; max-width: none; margin: 0 !important; }
"""


def build_app(jobs_dir: str | Path, models_dir: str | Path | None = None) -> gr.Blocks:
    workspace = Workspace.for_jobs_dir(jobs_dir, models_dir)
    manager = JobManager(workspace.jobs_dir)
    store = PresetStore(workspace.user_presets_dir)
    with gr.Blocks(title="Kiln") as app:
        gr.Markdown(f"# Kiln\nLocal Stable Diffusion trainer. Workspace: `{workspace.root}`. Every job is a TOML "
                    "file that also runs headless: `python -m trainer run JOB.toml`.")
        with gr.Tabs() as tabs:
            with gr.Tab("Dataset", id="dataset") as dataset_tab:
                dataset_choice = build_dataset_tab(workspace, manager)
            method_tabs = {}
            for method in METHODS:
                with gr.Tab(METHOD_LABELS[method], id=method):
                    method_tabs[method] = build_method_tab(method, workspace, manager, store)
            with gr.Tab("Jobs", id=JOBS_TAB) as jobs_tab:
                jobs = build_jobs_tab(manager, serve_files=lambda paths: allow_files(app, paths))
            with gr.Tab("Tools", id="tools") as tools_tab:
                tools = build_tools_tab(manager, workspace)

        def show_started(job_id: str):
            job_ids = [job["id"] for job in manager.list_jobs()]
            return gr.Tabs(selected=JOBS_TAB), gr.Dropdown(choices=job_ids, value=job_id)

        for tab in method_tabs.values():
            tab.started_job.change(show_started, tab.started_job, [tabs, jobs.job_choice],
                                   api_visibility="private")
        dataset_tab.select(lambda value: gr.Dropdown(choices=dataset_names(workspace), value=value),
                           dataset_choice, dataset_choice, api_visibility="private")
        jobs_tab.select(lambda: gr.Dropdown(choices=[j["id"] for j in manager.list_jobs()]), None, jobs.job_choice,
                        api_visibility="private")
        tools_tab.select(tools.refresh, None, tools.grid_job, api_visibility="private")
    app.kiln_workspace = workspace  # launch() must allow Gradio to serve files from it
    app.kiln_manager = manager  # launch() runs its queue
    return app


def allow_files(app: gr.Blocks, paths: list[str]) -> None:
    """Let Gradio serve exactly these files (not their folders): a job's outputs outside the workspace."""
    for path in paths:
        if path not in app.allowed_paths:
            app.allowed_paths.append(path)


def launch_app(jobs_dir: str | Path, host: str = "127.0.0.1", port: int = 7860,
               auth: tuple[str, str] | None = None, share: bool = False, block: bool = True,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, models_dir: str | Path | None = None,
               allowed_hosts: list[str] | tuple[str, ...] = ()) -> gr.Blocks:
    """Build and serve the app. Only the workspace's own folders (jobs, datasets, user presets) may be served
    (thumbnails, samples, outputs); not the folder around them, which may be the user's home. Files of a job
    that lie elsewhere (an output folder on another disk) are allowed one by one as the Jobs tab shows them.
    Failed logins are rate-limited per client address; uploads larger than `max_upload_mb` are refused; a
    request whose Host is neither the address listened on nor one of `allowed_hosts` is refused (DNS rebinding,
    ui/host_check.py). The queue runs in a thread of this process, so queued jobs start with no page open."""
    app = build_app(jobs_dir, models_dir)
    hosts = app.kiln_allowed_hosts = AllowedHosts(host, allowed_hosts)
    app.kiln_scheduler = QueueScheduler(app.kiln_manager).start()
    gradio.networking.url_ok = patient_url_ok
    app.launch(server_name=host, server_port=port, auth=auth, share=share, prevent_thread_lock=not block,
               css=PAGE_CSS + REVIEW_CSS, head=FOLDER_PATHS_HEAD + REVIEW_HEAD,
               allowed_paths=[str(p) for p in app.kiln_workspace.served_dirs], quiet=not block,
               max_file_size=int(max_upload_mb * 1024 * 1024),
               app_kwargs={"middleware": [Middleware(HostCheck, allowed=hosts), Middleware(LoginRateLimit)]})
    if app.share_url:  # the share tunnel brings requests under its own name
        hosts.add(urlsplit(app.share_url).hostname or "")
    return app


def patient_url_ok(url: str, attempts: int = 10) -> bool:
    """Whether the page answers at `url`. Hand-written because Gradio's own check, run by launch(), gives up at
    the first request slower than 3 s and then refuses to start ("When localhost is not accessible, a shareable
    link must be created"), which happens on a busy machine (a training job beside the UI, say). This one
    retries on timeouts and refused connections as well."""
    for _ in range(attempts):
        try:
            if httpx.head(url, timeout=10, verify=False).status_code in (200, 301, 302, 303, 307, 308, 401):
                return True
        except (httpx.ConnectError, httpx.TimeoutException):
            pass
        time.sleep(0.5)
    return False

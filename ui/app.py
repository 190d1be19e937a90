"""The web UI. This first version shows the job list; the full UI (datasets, method forms, presets,
live progress) is tracked in its own issue."""
from __future__ import annotations

from pathlib import Path

import gradio as gr


def build_app(jobs_dir: Path) -> gr.Blocks:
    from trainer.jobs import JobManager

    manager = JobManager(jobs_dir)

    def job_rows():
        return [[j.get("id"), j.get("state"), j.get("step"), j.get("total_steps"), j.get("error") or ""]
                for j in manager.list_jobs()]

    with gr.Blocks(title="Kiln") as app:
        gr.Markdown("# Kiln\nLocal Stable Diffusion trainer. Jobs run headless too: "
                    "`python -m trainer run JOB.toml`. The full UI is on its way.")
        table = gr.Dataframe(headers=["job", "state", "step", "total", "error"], value=job_rows,
                             interactive=False, every=2.0)
        gr.Button("Refresh").click(job_rows, outputs=table, api_name="jobs")
    return app

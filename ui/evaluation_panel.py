"""A job's evaluation on its page: the metrics table `trainer evaluate` wrote (evaluation/metrics.md) and its
charts, and an Evaluate button that queues an evaluation job (`trainer evaluate JOB --job-dir ...`, run by the
queue like any job, with its progress here and in the job list). Nothing here imports the engine."""
from __future__ import annotations

from pathlib import Path

from trainer.jobs import JobError, JobManager, evaluation_job_toml
from trainer.jobs.own_paths import inside_job

from .tool_paths import weights_files

CHARTS = ("fid", "kid", "is", "clip")
DEFAULT_IMAGES, DEFAULT_STEPS = 64, 20


def evaluation_view(job_dir: Path | None) -> tuple[str, list[tuple[str, str]]]:
    """(markdown, [(chart path, caption)]) for the job in `job_dir`."""
    if job_dir is None:
        return "", []
    folder = job_dir / "evaluation"
    table = inside_job(job_dir, "evaluation/metrics.md")  # not a link planted to show a file from elsewhere
    if table is None or not table.is_file():
        return ("No evaluation yet. “Evaluate this job's checkpoints” scores every saved checkpoint (FID, KID, Inception Score, CLIP "
                "score) as a job in the queue; it generates images, so it waits for the GPU like a training job "
                f"(headless: `python -m trainer evaluate {job_dir}`)."), []
    try:
        text = table.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return f"❌ could not read {table}: {e}", []
    charts = [(str(folder / f"{name}.png"), name.upper()) for name in CHARTS if (folder / f"{name}.png").is_file()]
    return text, charts


def queue_evaluation(manager: JobManager, job_id: str | None, images, steps) -> tuple[str, str | None]:
    """(message, the evaluation job's id or None): an evaluation job for `job_id`, queued, when it has saved
    checkpoints to score."""
    if not job_id:
        return "Choose a job first (click its row in the table).", None
    try:
        job = manager.get(job_id)
    except JobError as exc:
        return f"❌ {exc}", None
    if not manager.own_files(job, weights_files(job)):
        return f"❌ `{job_id}` has no saved checkpoints to evaluate yet.", None
    try:
        n, denoise = int(images or DEFAULT_IMAGES), int(steps or DEFAULT_STEPS)
        if n < 2 or denoise < 1:
            raise ValueError
    except (TypeError, ValueError):
        return "❌ Images per checkpoint must be 2 or more and Denoising steps 1 or more.", None
    evaluation_id = manager.create(evaluation_job_toml(Path(job["job_dir"]), n, denoise), name=f"evaluate {job_id}")
    manager.start_pending()
    return (f"Queued evaluation job `{evaluation_id}` for `{job_id}`: its progress shows here and in the job list; "
            "the table fills in when it is done."), evaluation_id

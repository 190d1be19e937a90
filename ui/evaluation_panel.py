"""A job's evaluation on its page: the metrics table `trainer evaluate` wrote (evaluation/metrics.md) and its
charts, plus the command that makes them. Read-only: nothing here imports the engine."""
from __future__ import annotations

from pathlib import Path

from trainer.jobs.own_paths import inside_job

CHARTS = ("fid", "kid", "is", "clip")


def evaluation_view(job_dir: Path | None) -> tuple[str, list[tuple[str, str]]]:
    """(markdown, [(chart path, caption)]) for the job in `job_dir`."""
    if job_dir is None:
        return "", []
    folder = job_dir / "evaluation"
    table = inside_job(job_dir, "evaluation/metrics.md")  # not a link planted to show a file from elsewhere
    if table is None or not table.is_file():
        return ("No evaluation yet. To score every saved checkpoint (FID, KID, Inception Score, CLIP score), run "
                f"`python -m trainer evaluate {job_dir}` (it generates images, so run it when the GPU is free)."), []
    try:
        text = table.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return f"❌ could not read {table}: {e}", []
    charts = [(str(folder / f"{name}.png"), name.upper()) for name in CHARTS if (folder / f"{name}.png").is_file()]
    return text, charts

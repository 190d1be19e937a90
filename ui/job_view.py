"""What the Jobs tab shows about a job, computed from its folder (status.json, events.jsonl, samples/, output/)
so a restarted app or a second window shows the same. Pure functions: no Gradio here."""
from __future__ import annotations

import html
import math
import threading
from pathlib import Path

import pandas as pd

from trainer.jobs import EventFeed

MAX_PLOT_POINTS = 1000
JOB_TABLE_HEADERS = ["job", "state", "phase", "step", "total", "loss", "error"]
STATE_COLOURS = {"queued": "#888", "running": "#2b7", "paused": "#c90", "stopping": "#c90", "done": "#27b",
                 "failed": "#d33", "stopped": "#777"}


def job_table(jobs: list[dict]) -> list[list]:
    return [[j["id"], j.get("state") or "damaged", j.get("phase") or "", j.get("step") or 0,
             j.get("total_steps") or "", _number(j.get("loss")), _first_problem(j)] for j in jobs]


def _first_problem(job: dict) -> str:
    if job.get("damaged"):
        return f"damaged: {job['damaged']}"
    return (job.get("error") or "").splitlines()[0] if job.get("error") else ""


def progress_html(job: dict) -> str:
    """A progress bar with state, phase, step/total, ETA, loss, LR and speed; the error for a failed job."""
    step, total = job.get("step") or 0, job.get("total_steps") or 0
    percent = min(100.0, 100.0 * step / total) if total else 0.0
    state = job.get("state") or "unknown"
    facts = [f"step {step}/{total or '?'}", f"phase {job.get('phase') or '-'}"]
    if job.get("epoch") is not None:
        facts.append(f"epoch {job['epoch']}/{job.get('total_epochs') or '?'}")
    if job.get("eta_s") is not None and state in ("running", "stopping"):
        facts.append(f"ETA {format_duration(job['eta_s'])}")
    facts += [f"{label} {_number(job.get(key))}" for label, key in
              (("loss", "loss_avg"), ("LR", "lr"), ("it/s", "it_per_s")) if job.get(key) is not None]
    age = job.get("heartbeat_age_s")
    if state in ("running", "paused", "stopping") and age is not None and age > 60:
        facts.append(f"no sign of life for {format_duration(age)}: the worker may hang; Stop ends it")
    error = "\n".join(filter(None, [job.get("error"), job.get("damaged") and f"damaged: {job['damaged']}"]))
    colour = STATE_COLOURS.get(state, "#888")
    return (f'<div class="kiln-progress" data-state="{html.escape(state)}" data-step="{step}" '
            f'data-total="{total}">'
            f'<div><b>{html.escape(job.get("id", ""))}</b> — <span style="color:{colour}">{html.escape(state)}</span>'
            f' ({percent:.0f}%)</div>'
            f'<div style="background:#ddd;border-radius:4px;height:14px;overflow:hidden">'
            f'<div class="kiln-progress-fill" style="background:{colour};height:14px;width:{percent:.1f}%"></div>'
            f'</div><div>{html.escape(" · ".join(facts))}</div>'
            + (f'<pre class="kiln-error">{html.escape(error)}</pre>' if error else "") + "</div>")


def loss_frame(job_dir: Path) -> pd.DataFrame:
    """step / loss / smoothed loss / lr from the progress events, thinned to at most MAX_PLOT_POINTS rows."""
    rows = _progress_rows(job_dir)
    if len(rows) > MAX_PLOT_POINTS:
        stride = math.ceil(len(rows) / MAX_PLOT_POINTS)
        rows = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
    return pd.DataFrame(rows, columns=["step", "loss", "loss_avg", "lr"])


# Each job's progress rows, extended from the bytes appended to events.jsonl since the last look.
_feeds: dict[str, tuple[EventFeed, list[tuple]]] = {}
_feeds_lock = threading.Lock()


def _progress_rows(job_dir: Path) -> list[tuple]:
    with _feeds_lock:
        feed, rows = _feeds.setdefault(str(job_dir), (EventFeed(job_dir), []))
        events = feed.new_events()
        if feed.restarted:
            rows.clear()
        rows += [(e["step"], e.get("loss"), e.get("loss_avg"), e.get("lr")) for e in events
                 if e.get("kind") == "progress" and _finite(e.get("step")) and _finite(e.get("loss"))]
        return list(rows)


def sample_images(job: dict, limit: int = 8) -> list[str]:
    """The newest sample images, newest first (from samples/, plus latest_sample if it lives elsewhere)."""
    folder = Path(job["job_dir"]) / "samples"
    found = sorted((p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")),
                   key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    paths = [str(p) for p in found]
    latest = job.get("latest_sample")
    if latest and latest not in paths and Path(latest).is_file():
        paths.insert(0, latest)
    return paths[:limit]


def output_files(job: dict) -> list[str]:
    """Weights files the job has saved (status outputs, plus anything in output/ — checkpoints included)."""
    listed = [p for p in job.get("outputs") or [] if Path(p).is_file()]
    folder = Path(job["job_dir"]) / "output"
    found = sorted(str(p) for p in folder.glob("*.safetensors")) if folder.is_dir() else []
    return list(dict.fromkeys(listed + found))


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def _number(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

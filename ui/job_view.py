"""What the Jobs tab shows about a job, computed from its folder (status.json, events.jsonl, samples/, output/)
so a restarted app or a second window shows the same. Pure functions: no Gradio here."""
from __future__ import annotations

import base64
import html
import io
import math
import re
from datetime import datetime
from pathlib import Path

from PIL import Image

import pandas as pd

from .job_events import job_events

MAX_PLOT_POINTS = 1000
CHECKPOINT_STEP = re.compile(r"-step(\d+)$")  # NAME-step00000100.safetensors; the final file is NAME.safetensors
RAW, SMOOTHED, VALIDATION = "loss", "smoothed", "validation"  # the loss chart's series
JOB_TABLE_HEADERS = ["job", "title", "state", "phase", "step", "total", "loss", "error"]
STATE_COLOURS = {"queued": "#888", "running": "#2b7", "paused": "#c90", "stopping": "#c90", "done": "#27b",
                 "failed": "#d33", "cancelled": "#777", "stopped": "#777"}
CLASS_PHASE = "generating class images"  # DreamBooth's phase before training (trainer.methods.dreambooth)
CLASS_THUMBNAILS, THUMBNAIL_PX = 4, 96
STOPPED_STATES = ("cancelled", "stopped")  # "cancelled" is the older word for a job stopped on request


def job_table(jobs: list[dict]) -> list[list]:
    return [[j["id"], titled_with_time(j), state_word(j) if j.get("state") else "damaged",
             phase_word(j), j.get("step") or 0, j.get("total_steps") or "", _number(j.get("loss")),
             _first_problem(j)] for j in jobs]


def titled_with_time(job: dict) -> str:
    """The title (or name) with the time the job was made: two jobs of one name stay apart."""
    title = job.get("title") or job.get("name") or ""
    created = job.get("created_at")
    if not _finite(created):
        return title
    return f"{title} · {datetime.fromtimestamp(created):%b %d %H:%M}"


def phase_word(job: dict) -> str:
    """An ended job's phase says it ended ("done"), not the last phase its worker reported."""
    state, phase = job.get("state"), job.get("phase") or ""
    if state == "done":
        return "done"
    if state in ("failed", *STOPPED_STATES):
        return f"{state_word(job)} while {phase}" if phase else state_word(job)
    return phase


def _first_problem(job: dict) -> str:
    if job.get("damaged"):
        return f"damaged: {job['damaged']}"
    return (job.get("error") or "").splitlines()[0] if job.get("error") else ""


def state_word(job: dict) -> str:
    state = job.get("state") or "unknown"
    return "stopped" if state in STOPPED_STATES else state


def progress_html(job: dict, saved_step: int | None = None, can_continue: bool = False) -> str:
    """A progress bar with state, phase, step/total, ETA, loss, LR and speed; the error for a failed job;
    "stopped — saved at step N" for a job stopped with a state to continue from."""
    step, total = job.get("step") or 0, job.get("total_steps") or 0
    percent = min(100.0, 100.0 * step / total) if total else 0.0
    state = job.get("state") or "unknown"
    shown_state = state_word(job)
    if shown_state in ("stopped", "failed") and saved_step is not None:
        shown_state += f" — saved at step {saved_step}; Continue carries on from there"
    extra = ""
    if job.get("phase") == CLASS_PHASE and _finite(job.get("total")) and state in ("running", "stopping", "paused"):
        # DreamBooth makes its class images before step 1: show that count, not "step 0/?".
        done, needed = int(job.get("done") or 0), int(job["total"])
        percent = min(100.0, 100.0 * done / needed) if needed else 0.0
        facts = [f"class images {done} of {needed}"]
        if _finite(job.get("eta_s")):
            facts.append(f"ETA {format_duration(job['eta_s'])}")
        if job.get("class_dir"):
            facts.append(f"in {job['class_dir']}")
            extra = class_image_strip(Path(job["class_dir"]))
    else:
        facts = [f"step {step}/{total or '?'}", f"phase {phase_word(job) or '-'}"]
    if job.get("epoch") is not None and job.get("phase") != CLASS_PHASE:
        facts.append(f"epoch {job['epoch']}/{job.get('total_epochs') or '?'}")
    if job.get("eta_s") is not None and state in ("running", "stopping") and job.get("phase") != CLASS_PHASE:
        facts.append(f"ETA {format_duration(job['eta_s'])}")
    facts += [f"{label} {_number(job.get(key))}" for label, key in
              (("loss", "loss_avg"), ("LR", "lr"), ("it/s", "it_per_s")) if job.get(key) is not None]
    age = job.get("heartbeat_age_s")
    if state in ("running", "paused", "stopping") and age is not None and age > 60:
        facts.append(f"no sign of life for {format_duration(age)}: the worker may hang; Stop ends it")
    error = "\n".join(filter(None, [job.get("error"), job.get("damaged") and f"damaged: {job['damaged']}"]))
    colour = STATE_COLOURS.get(state, "#888")
    return (f'<div class="kiln-progress" data-state="{html.escape(state)}" data-step="{step}" '
            f'data-total="{total}" data-can-continue="{str(can_continue).lower()}">'
            f'<div><b>{html.escape(job.get("title") or job.get("id", ""))}</b> — '
            f'<span class="kiln-state" style="color:{colour}">{html.escape(shown_state)}</span>'
            f' ({percent:.0f}%)</div>'
            f'<div style="background:#ddd;border-radius:4px;height:14px;overflow:hidden">'
            f'<div class="kiln-progress-fill" style="background:{colour};height:14px;width:{percent:.1f}%"></div>'
            f'</div><div>{html.escape(" · ".join(facts))}</div>{extra}'
            + (f'<pre class="kiln-error">{html.escape(error)}</pre>' if error else "") + "</div>")


def class_image_strip(folder: Path, count: int = CLASS_THUMBNAILS) -> str:
    """The newest few class images as small inline thumbnails (the class folder may be a shared cache outside
    the folders the web server may hand out, so the pictures travel inside the page)."""
    try:
        found = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")),
                       key=lambda p: p.stat().st_mtime, reverse=True)[:count]
    except OSError:
        return ""
    thumbnails = []
    for path in found:
        try:
            with Image.open(path) as image:
                image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, "JPEG", quality=80)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        data = base64.b64encode(buffer.getvalue()).decode()
        thumbnails.append(f'<img src="data:image/jpeg;base64,{data}" title="{html.escape(path.name)}" '
                          f'style="height:{THUMBNAIL_PX}px;margin-right:4px;border-radius:4px">')
    return f'<div class="kiln-class-images">{"".join(thumbnails)}</div>' if thumbnails else ""


def loss_frame(job_dir: Path) -> pd.DataFrame:
    """The loss chart's data in long form: step, value, series ("loss" raw, "smoothed", and "validation" for a
    job with a [validation] split or folder); every column has a numeric or string dtype even when empty, so the
    plot's axes are numbers, never categories. The smoothing runs over every point as it is read (ui/job_events);
    the points are thinned to at most MAX_PLOT_POINTS per series afterwards."""
    rows, validation, _ = job_events(job_dir)
    kept = _thinned(range(len(rows)))
    data = [(rows[i][0], rows[i][1], RAW) for i in kept] + [(rows[i][0], rows[i][2], SMOOTHED) for i in kept]
    data += [(step, loss, VALIDATION) for step, loss in (validation[i] for i in _thinned(range(len(validation))))]
    return _numeric_frame(data, ["step", "value", "series"])


def lr_frame(job_dir: Path) -> pd.DataFrame:
    """step / lr for the learning-rate chart."""
    rows = [(step, lr) for step, _, _, lr in job_events(job_dir)[0] if lr is not None]
    return _numeric_frame([rows[i] for i in _thinned(range(len(rows)))], ["step", "lr"])


def _thinned(indices: range) -> list[int]:
    if len(indices) <= MAX_PLOT_POINTS:
        return list(indices)
    stride = math.ceil(len(indices) / MAX_PLOT_POINTS)
    kept = list(indices[::stride])
    return kept + ([indices[-1]] if kept[-1] != indices[-1] else [])


def _numeric_frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({c: ("string" if c == "series" else "float64") for c in columns})


def sample_images(job: dict, limit: int = 48) -> list[tuple[str, str]]:
    """(image, caption) of the samples over time, newest first; the caption names the step and the prompt (from
    the sample events; images without an event still show, under their file name)."""
    folder = Path(job["job_dir"]) / "samples"
    found = sorted((p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")),
                   key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    paths = [str(p) for p in found]
    latest = job.get("latest_sample")
    if latest and latest not in paths and Path(latest).is_file():
        paths.insert(0, latest)
    about = job_events(job["job_dir"])[2]  # sample path → (step, prompt)

    def caption(path: str) -> str:
        if path not in about:
            return Path(path).name
        step, prompt = about[path]
        prompt = prompt.split(" --")[0]  # the prompt without its --s/--d options
        return f"step {step}: {prompt}" if prompt else f"step {step}"

    steps = {path: about[path][0] for path in paths if _finite(about.get(path, (None,))[0])}
    paths.sort(key=lambda path: steps.get(path, math.inf), reverse=True)  # by step; unknown ones first
    return [(path, caption(path)) for path in paths[:limit]]


def output_files(job: dict) -> list[str]:
    """Weights files the job has saved: the final file first, then its checkpoints newest first (status
    outputs, plus anything in output/)."""
    listed = [p for p in job.get("outputs") or [] if Path(p).is_file()]
    folder = Path(job["job_dir"]) / "output"
    found = sorted(str(p) for p in folder.glob("*.safetensors")) if folder.is_dir() else []
    files = list(dict.fromkeys(listed + found))
    return sorted(files, key=_output_order)


def _output_order(path: str) -> tuple[int, int]:
    step = CHECKPOINT_STEP.search(Path(path).stem)
    return (1, -int(step.group(1))) if step else (0, 0)


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

"""The preflight summary card: what the run will be (images x repeats x epochs / batch = steps), how long it may
take here, the memory it needs, and the warnings that matter before pressing Start; the full `trainer check`
report stays below it, folded. Built from the check's text report and the job's config; no torch here."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import JobConfig
from trainer.config.schema import FIELDS_BY_NAME

from .job_view import format_duration
from .labels import in_ui_words

CUDA_ONLY_PRECISIONS = ("fp16", "bf16")
EIGHT_BIT_OPTIMIZERS = ("adamw8bit", "lion8bit")
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


@dataclass
class CheckSummary:
    """What the card shows, read from the check report (missing parts stay None)."""
    images: int | None = None
    repeated: int | None = None
    steps_per_epoch: float | None = None
    total_steps: int | None = None
    epochs: int | None = None
    memory_gib: float | None = None
    memory_line: str = ""
    warnings: list[str] = field(default_factory=list)
    subsets: list[tuple[str, int, float]] = field(default_factory=list)  # (folder, images, repeats)
    class_images: int | None = None
    # memory savers the report says are off, with what each would save (GiB, positive), largest first
    unused_savers: list[tuple[str, float]] = field(default_factory=list)
    problem: str = ""  # the check's own error line(s), when it refused the job


def read_check_report(report: str) -> CheckSummary:
    def find(pattern: str) -> re.Match | None:
        return re.search(pattern, report, re.MULTILINE)

    summary = CheckSummary()
    if m := find(rf"^images: (\d+)\s+with repeats: (\d+)"):
        summary.images, summary.repeated = int(m.group(1)), int(m.group(2))
    if m := find(rf"^steps per epoch: {_NUMBER}"):
        summary.steps_per_epoch = float(m.group(1))
    if m := find(r"^total steps: (\d+)(?:\s+epochs: (\d+))?"):
        summary.total_steps = int(m.group(1))
        summary.epochs = int(m.group(2)) if m.group(2) else None
    if m := find(rf"^GPU at its peak: about {_NUMBER} GiB.*$"):  # trainer/memory.py's headline
        summary.memory_gib, summary.memory_line = float(m.group(1)), m.group(0)
    summary.warnings = [line.split(":", 1)[1].strip() for line in report.splitlines()
                        if line.startswith("warning:")]
    summary.subsets = [(m.group(1), int(m.group(2)), float(m.group(3))) for m in
                       re.finditer(rf"^  (.+): (\d+) images x {_NUMBER} repeats$", report, re.MULTILINE)]
    if m := find(r"^class images: (\d+)"):
        summary.class_images = int(m.group(1))
    savers = [(m.group(1), float(m.group(2))) for m in
              re.finditer(rf"^  (\S[^:]*): -{_NUMBER} GiB  \((?:off: )?would save this\)$", report, re.MULTILINE)]
    summary.unused_savers = sorted(savers, key=lambda saver: -saver[1])
    summary.problem = check_problem(report)
    return summary


def check_problem(report: str) -> str:
    """What the check refused, from its "kiln: error: ..." lines (the last part of the report), else ""."""
    errors = [line.split("kiln: error:", 1)[1].strip() for line in report.splitlines() if "kiln: error:" in line]
    return "; ".join(errors)


def saver_label(name: str) -> str:
    """A saver as the form names it ("fp8_base" -> its field's label), a setting with its value as it is."""
    field_ = FIELDS_BY_NAME.get(f"training.{name}")
    return field_.label if field_ is not None else name


def gpu_memory_gib() -> float | None:
    """The first GPU's memory from nvidia-smi, or None without an NVIDIA GPU (the UI must not import torch)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10)
        return float(done.stdout.split()[0]) / 1024 if done.returncode == 0 and done.stdout.split() else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def hardware_warnings(cfg: JobConfig, summary: CheckSummary, gpu_gib: float | None) -> list[str]:
    """Settings that do not fit this machine, and a warmup longer than the run."""
    found = []
    tr = cfg.training
    if gpu_gib is None and tr.mixed_precision in CUDA_ONLY_PRECISIONS:
        found.append(f"Mixed precision {tr.mixed_precision} needs a CUDA GPU to pay off and this machine has "
                     "none; \"no\" is the plain choice for a CPU run.")
    if gpu_gib is None and tr.optimizer in EIGHT_BIT_OPTIMIZERS:
        found.append(f"The 8-bit optimizer {tr.optimizer} is made for CUDA GPUs; without one \"adamw\" is the "
                     "plain choice.")
    if gpu_gib is not None and summary.memory_gib is not None and summary.memory_gib > gpu_gib:
        # The savers the memory model says are off, largest first: the advice fits this job, not a generic list.
        savers = ", ".join(f"{saver_label(name)} (−{gib:.1f} GiB)" for name, gib in summary.unused_savers)
        advice = (f"turn on {savers}; or lower the batch size or resolution" if savers else
                  "lower the batch size or resolution")
        found.append(f"The estimate ({summary.memory_gib:.1f} GiB) is more than this GPU's {gpu_gib:.1f} GiB: "
                     f"{advice}.")
    if summary.total_steps and tr.lr_warmup_steps > summary.total_steps:
        found.append(f"Warmup steps ({tr.lr_warmup_steps}) are more than the whole run ({summary.total_steps} "
                     "steps): the learning rate never reaches its set value.")
    return found


def steps_formula(cfg: JobConfig, summary: CheckSummary) -> str:
    """images x repeats x epochs / batch = steps, in the words of this job."""
    if summary.total_steps is None:
        return f"steps unknown: {in_ui_words(summary.problem)}" if summary.problem else "steps unknown (see the report)"
    batch = cfg.training.batch_size * cfg.training.gradient_accumulation_steps * cfg.training.num_processes
    if summary.images and summary.repeated:
        repeats = summary.repeated / summary.images
        epochs = summary.epochs or cfg.training.epochs
        shown = f"{repeats:g}" if repeats.is_integer() else f"{repeats:.2f} (average)"
        formula = f"{summary.images} images × {shown} repeats × {epochs} epochs / batch {batch}"
        if cfg.training.max_steps:
            return f"{formula}, capped by Max steps = {summary.total_steps} steps"
        return f"{formula} = {summary.total_steps} steps"
    return f"{summary.total_steps} steps"


def concept_lines(cfg: JobConfig, summary: CheckSummary) -> list[str]:
    """With [[dataset.concepts]]: each folder's images x repeats (a concept by its number, the image folder's
    Kohya subfolders by name), and the class images (of regularisation concepts, or DreamBooth's)."""
    if not cfg.dataset.concepts:
        return []
    numbers = {Path(table["dir"]).name: number for number, table in enumerate(cfg.dataset.concepts, start=1)
               if not table["is_regularization"]}
    lines = []
    for folder, images, repeats in summary.subsets:
        what = f"Concept {numbers[folder]} ({folder})" if folder in numbers else f"Image folder {folder}"
        lines.append(f"{what}: {images} images × {repeats:g} repeats")
    if summary.class_images:
        lines.append(f"Class images: {summary.class_images}, paired with as many subject samples")
    return lines


def card_html(cfg: JobConfig, ok: bool, report: str, speed_it_s: float | None,
              gpu_gib: float | None = None) -> str:
    """The summary card: the step count first, then time, memory and warnings."""
    summary = read_check_report(report)
    rows = [f'<div class="kiln-card-steps"><b>{summary.total_steps if summary.total_steps is not None else "?"} '
            f'steps</b> — {html.escape(steps_formula(cfg, summary))}</div>']
    rows += [f'<div class="kiln-card-concept">{html.escape(line)}</div>' for line in concept_lines(cfg, summary)]
    if summary.total_steps and speed_it_s:
        rows.append(f"<div>Time: about {format_duration(summary.total_steps / speed_it_s)} at "
                    f"{speed_it_s:.2g} steps/s (the speed of your last job here)</div>")
    else:
        rows.append("<div>Time: known after the first steps (no earlier job here to measure the speed)</div>")
    gpu = f"; this GPU has {gpu_gib:.1f} GiB" if gpu_gib is not None else "; no CUDA GPU found on this machine"
    memory = html.escape(summary.memory_line or "memory: unknown until the model is loaded")
    rows.append(f"<div>Memory (VRAM, full-size model): {memory}{gpu}</div>")
    warnings = hardware_warnings(cfg, summary, gpu_gib) + [in_ui_words(w) for w in summary.warnings]
    rows += [f'<div class="kiln-card-warning">⚠ {html.escape(w, quote=False)}</div>' for w in warnings]
    verdict = "✅ ready to start" if ok else "❌ the check found a problem (see the report below)"
    return (f'<div class="kiln-preflight-card" data-ok="{str(ok).lower()}" '
            f'data-steps="{summary.total_steps if summary.total_steps is not None else ""}">'
            + "".join(rows) + f"<div>{verdict}</div></div>")

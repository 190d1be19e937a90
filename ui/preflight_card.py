"""The preflight summary card: what the run will be (images x repeats x epochs / batch = steps), how long it may
take here, the memory it needs, and the warnings that matter before pressing Start; the full `trainer check`
report stays below it, folded. Built from the check's text report and the job's config; no torch here."""
from __future__ import annotations

import html
import itertools
import math
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import ConfigError, JobConfig, load_job
from trainer.config.native import NATIVE_RESOLUTION
from trainer.config.schema import FIELDS_BY_NAME
from trainer.dreambooth.class_images import cache_root
from trainer.dreambooth.dataset import SHARED_CACHE_LABEL

from .estimates import EarlierRun, Estimate, generation_estimate, training_estimate

from .job_view import format_duration
from .labels import in_ui_words

CUDA_ONLY_PRECISIONS = ("fp16", "bf16")
EIGHT_BIT_OPTIMIZERS = ("adamw8bit", "lion8bit")
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
DEMO_PRESET = Path(__file__).resolve().parents[1] / "presets" / "demo-lora.toml"
GENERATED_WARNING = re.compile(r"^(\d+) .*images will be generated before training")  # trainer/dreambooth


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
    to_generate: int = 0  # class / regularisation images the run generates before training
    fit: str = ""  # the planner's line ("to fit 12 GiB: fp8 base, 4 blocks swapped; ~35 % slower (...)")
    fit_run: bool = False  # training.fit = "auto": the run turns those savers on
    fit_sources: list[str] = field(default_factory=list)  # where each saver's speed cost comes from


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
    summary.to_generate = sum(int(m.group(1)) for w in summary.warnings if (m := GENERATED_WARNING.search(w)))
    if m := find(r"^# fit to .*\n(.+)$"):  # trainer/planner.py's section
        summary.fit, summary.fit_run = m.group(1), 'training.fit = "auto"' in m.group(0).splitlines()[0]
        rest = report[m.end():].splitlines()[1:]
        summary.fit_sources = [line.strip() for line in itertools.takewhile(lambda l: l.startswith("  "), rest)
                               if line.startswith("  training.")]
    return summary


def check_problem(report: str) -> str:
    """What the check refused, from its "kiln: error: ..." lines (the last part of the report), else ""."""
    errors = [line.split("kiln: error:", 1)[1].strip() for line in report.splitlines() if "kiln: error:" in line]
    return "; ".join(errors)


def saver_label(name: str) -> str:
    """A saver as the form names it: "blocks_to_swap" -> its field's label, "base_quantization = fp8" -> the
    label = fp8; anything else as it is."""
    key, _, value = name.partition(" = ")
    field_ = FIELDS_BY_NAME.get(f"training.{key}")
    return name if field_ is None else f"{field_.label} = {value}" if value else field_.label


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


def demo_prompt_hint(cfg: JobConfig) -> list[str]:
    """The demo preset's sample prompts left in a job that trains another dataset: its previews would show the
    demo's shapes, not the person's subject."""
    try:
        demo = load_job(DEMO_PRESET, complete=False)
    except (ConfigError, OSError):
        return []
    if not cfg.sample.prompts or list(cfg.sample.prompts) != list(demo.sample.prompts):
        return []
    if cfg.dataset.dir and Path(cfg.dataset.dir).resolve() == Path(demo.dataset.dir).resolve():
        return []
    prompt = cfg.sample.prompts[0].split(" --")[0]
    return [f"The sample prompts are the demo's (\"{prompt}\"), not about your images: write a prompt with your "
            "trigger word in Sample settings, or the previews show the demo's shapes."]


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


QUANTIZED_BASE = ("A quantized base (fp8 or int8) trains the LoRA against rounded frozen weights; you apply it to "
                  "the full-precision model, which differs slightly from what it learned against (usually a small "
                  "loss of fidelity, most visible in fine detail).")
QUANTIZED_4BIT = ("A 4-bit base (nf4, QLoRA's setting) trains the LoRA against frozen weights rounded to 4 bits; you "
                  "apply it to the full-precision model, which differs more from what it learned against than with "
                  "an 8-bit base (expect some loss of fidelity, most visible in fine detail and likeness).")


def quantized_base(cfg: JobConfig, summary: CheckSummary) -> str:
    """"nf4", "fp8", "int8" or "": the base the run trains on, as written or as the planner's choice makes it."""
    chosen = summary.fit if summary.fit.startswith("to fit") else ""  # a plan that does not fit changes nothing
    planned = next((kind for kind in ("nf4", "int8", "fp8") if f"{kind} base" in chosen), "")
    written = cfg.training.base_quantization
    return planned or ("" if written == "none" else written)


QUANTIZED_T5 = ("A quantized T5-XXL encodes the captions with rounded weights: the cached caption embeddings differ "
                "slightly from the full-precision encoder's (more with nf4), and the LoRA learns against those. It "
                "costs no step time when the captions are cached.")


def quantized_t5(cfg: JobConfig, summary: CheckSummary) -> str:
    """"fp8", "int8", "nf4" or "": the T5-XXL the run encodes with, as written or as the planner's choice makes it."""
    chosen = summary.fit if summary.fit.startswith("to fit") else ""
    planned = next((kind for kind in ("nf4", "fp8") if f"{kind} T5-XXL" in chosen), "")
    written = cfg.training.t5_quantization
    return planned or ("" if written == "none" else written)


def fit_row(summary: CheckSummary) -> str:
    """The planner's choice: which savers make the job fit the GPU, how much slower, and where each cost comes
    from (measured by bench/gpu_suite.py, published, or an estimate)."""
    who = "the run turns them on (Fit my GPU = auto)" if summary.fit_run else "set Fit my GPU = auto to use them"
    sources = "".join(f"<li>{html.escape(line)}</li>" for line in summary.fit_sources)
    lead = html.escape(summary.fit)
    if summary.fit.startswith("to fit"):
        lead += f" — {who}"
    return (f'<div class="kiln-card-fit">{lead}' + (f"<ul>{sources}</ul>" if sources else "") + "</div>")


def steps_formula(cfg: JobConfig, summary: CheckSummary) -> str:
    """images x repeats x epochs / batch = steps, in the words of this job; with Max steps set, that it is Max
    steps that decides the length (and how many epochs that makes), not the Epochs field."""
    if summary.total_steps is None:
        return f"steps unknown: {in_ui_words(summary.problem)}" if summary.problem else "steps unknown (see the report)"
    batch = cfg.training.batch_size * cfg.training.gradient_accumulation_steps * cfg.training.num_processes
    if summary.images and summary.repeated:
        repeats = summary.repeated / summary.images
        shown = f"{repeats:g}" if repeats.is_integer() else f"{repeats:.2f} (average)"
        if cfg.training.max_steps:
            return (f"{max_steps_label()} = {summary.total_steps} sets the length: "
                    f"{epochs_of(summary)} of {summary.images} images × {shown} repeats / batch {batch} "
                    "; Epochs does not count while Max steps is set")
        epochs = summary.epochs or cfg.training.epochs
        return f"{summary.images} images × {shown} repeats × {epochs} epochs / batch {batch} = {summary.total_steps} steps"
    return f"{summary.total_steps} steps"


def max_steps_label() -> str:
    return FIELDS_BY_NAME["training.max_steps"].label


def epochs_of(summary: CheckSummary) -> str:
    """"44 epochs", or "5 epochs (the last one partly)" when the steps end inside an epoch."""
    per_epoch = summary.steps_per_epoch
    if not per_epoch:
        return f"{summary.epochs} epochs" if summary.epochs else "? epochs"
    exact = summary.total_steps / per_epoch
    whole = math.ceil(exact - 1e-9)
    return f"{whole} epochs" if abs(exact - whole) < 1e-9 else f"{whole} epochs (the last one partly)"


def resolved_facts(report: str) -> tuple[str | None, int | None]:
    """(model family, training resolution) as the check resolved them: the family from the memory section's
    header, the resolution from the resolved job's [dataset] table."""
    arch = re.search(r"^# memory \(estimate for the full-size (\w+) architecture", report, re.MULTILINE)
    section = report.split("# resolved job", 1)[1].split("\n# ", 1)[0] if "# resolved job" in report else ""
    try:
        resolution = tomllib.loads(section).get("dataset", {}).get("resolution")
    except tomllib.TOMLDecodeError:
        resolution = None
    family = arch.group(1) if arch and arch.group(1) != "model" else None
    return family, resolution if isinstance(resolution, int) and resolution > 0 else None


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


def time_rows(cfg: JobConfig, summary: CheckSummary, report: str, runs: list[EarlierRun],
              workspace_root: Path | None) -> list[str]:
    """Training time from earlier jobs of the same method and family (or "no basis"), then, when class or
    regularisation images are to be generated, their time and where they are kept."""
    arch, resolution = resolved_facts(report)
    resolution = resolution or cfg.dataset.resolution or NATIVE_RESOLUTION.get(arch or "", 512)
    batch = cfg.training.batch_size * cfg.training.gradient_accumulation_steps
    rows, total = [], 0.0
    training = training_estimate(runs, cfg.method, arch, resolution, batch, summary.total_steps) \
        if summary.total_steps else "no basis: the number of steps is not known"
    generated = summary.to_generate
    if generated:
        made = generation_estimate(runs, arch, resolution, generated)
        rows.append(f"Class images: {generated} to generate first, {made.text}. {class_folder_words(cfg, report, workspace_root)}")
        total += made.seconds
    if isinstance(training, Estimate):
        rows.insert(0, f"Time: {training.text}" + (f"; with the class images about "
                                                   f"{format_duration(total + training.seconds)} in all"
                                                   if generated else ""))
    else:
        rows.insert(0, f"Time: {training}")
    return rows


def class_folder_words(cfg: JobConfig, report: str, workspace_root: Path | None) -> str:
    """Where the class (or regularisation) images are kept, and how to keep them in the workspace instead."""
    folder = re.search(r"^class images: \d+ in (.+?)   ", report, re.MULTILINE)
    where = folder.group(1) if folder else ""
    if where and where != SHARED_CACHE_LABEL:
        return f"They are kept in {where}."
    field_ = FIELDS_BY_NAME["dreambooth.class_dir" if cfg.method == "dreambooth" else "dataset.reg_dir"]
    offer = (f" To keep them in the workspace, set {field_.label} to "
             f"{workspace_root / 'class-images' / cfg.output.name}." if workspace_root is not None else "")
    return f"They are kept in the shared cache {cache_root()} (outside the workspace), reused by later jobs.{offer}"


def card_html(cfg: JobConfig, ok: bool, report: str, runs: list[EarlierRun] = (),
              gpu_gib: float | None = None, workspace_root: Path | None = None) -> str:
    """The summary card: the step count first, then time, memory and warnings. `runs`: what earlier jobs
    here measured (ui/estimates.py)."""
    summary = read_check_report(report)
    rows = [f'<div class="kiln-card-steps"><b>{summary.total_steps if summary.total_steps is not None else "?"} '
            f'steps</b> — {html.escape(steps_formula(cfg, summary))}</div>']
    rows += [f'<div class="kiln-card-concept">{html.escape(line)}</div>' for line in concept_lines(cfg, summary)]
    rows += [f'<div class="kiln-card-time">{_with_code(line)}</div>'
             for line in time_rows(cfg, summary, report, list(runs), workspace_root)]
    gpu = f"; this GPU has {gpu_gib:.1f} GiB" if gpu_gib is not None else "; no CUDA GPU found on this machine"
    memory = html.escape(summary.memory_line or "memory: unknown until the model is loaded")
    rows.append(f"<div>Memory (VRAM, full-size model): {memory}{gpu}</div>")
    if summary.fit:
        rows.append(fit_row(summary))
    if base := quantized_base(cfg, summary):
        text = QUANTIZED_4BIT if base == "nf4" else QUANTIZED_BASE
        rows.append(f'<div class="kiln-card-quantized" data-base="{base}">{html.escape(text)}</div>')
    if t5 := quantized_t5(cfg, summary):
        rows.append(f'<div class="kiln-card-quantized" data-t5="{t5}">{html.escape(QUANTIZED_T5)}</div>')
    warnings = hardware_warnings(cfg, summary, gpu_gib) + demo_prompt_hint(cfg) + [
        in_ui_words(w) for w in summary.warnings if not GENERATED_WARNING.search(w)]
    rows += [f'<div class="kiln-card-warning">⚠ {html.escape(w, quote=False)}</div>' for w in warnings]
    verdict = "✅ ready to start" if ok else "❌ the check found a problem (see the report below)"
    return (f'<div class="kiln-preflight-card" data-ok="{str(ok).lower()}" '
            f'data-steps="{summary.total_steps if summary.total_steps is not None else ""}">'
            + "".join(rows) + f"<div>{verdict}</div></div>")


def _with_code(text: str) -> str:
    """`text` as HTML, its `quoted` names (job ids) in <code> as the Markdown messages show them."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))

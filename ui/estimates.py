"""How long a job may take here, from what earlier jobs in this jobs folder measured: training speed from jobs
of the same method and model family (scaled by batch and resolution when those differ), class-image generation
from earlier generations (else a stated assumption). No basis is said as such, never borrowed from an
unrelated job (a caption job's "72 steps/s" is no training speed). Pure functions; no Gradio, no torch."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from trainer.config.native import NATIVE_RESOLUTION
from trainer.families import DEFAULT_FAMILY, FAMILIES

from .job_view import format_duration

MIN_MEASURED_STEPS = 3  # a speed read before this many steps is mostly start-up
# Seconds per class image when nothing here has measured one: the family's class_image_seconds (a mid-range CUDA
# GPU at its native size and about 30 denoising steps). Said on the card as an assumption, with these numbers.
ASSUMED_STEPS = 30
METHOD_WORDS = {"lora": "LoRA", "dreambooth": "DreamBooth", "textual_inversion": "textual inversion",
                "finetune": "fine-tune"}


@dataclass(frozen=True)
class EarlierRun:
    """What one earlier training job says about speed here."""
    job_id: str
    method: str
    arch: str | None
    resolution: int | None
    batch: int                       # micro-batch x accumulation: the images one optimizer step sees per process
    steps_per_s: float | None
    images_per_s: float | None       # class/regularisation images generated per second


@dataclass(frozen=True)
class Estimate:
    seconds: float
    text: str                        # "about 12m 30s at 0.27 steps/s, measured by ..."


def earlier_runs(jobs: list[dict]) -> list[EarlierRun]:
    """The training jobs among `jobs` (JobManager.list_jobs(), newest first) with what they measured."""
    runs = []
    for job in jobs:
        if job.get("damaged"):
            continue
        toml = _read_toml(Path(job["job_dir"]) / "job.toml")
        method = toml.get("method")
        if not isinstance(method, str) or toml.get("task"):
            continue  # caption and evaluation jobs measure something else
        training = toml.get("training") if isinstance(toml.get("training"), dict) else {}
        model = toml.get("model") if isinstance(toml.get("model"), dict) else {}
        dataset = toml.get("dataset") if isinstance(toml.get("dataset"), dict) else {}
        arch = job.get("arch") if isinstance(job.get("arch"), str) else model.get("arch")
        arch = arch if isinstance(arch, str) and arch != "auto" else None
        resolution = job.get("resolution") or dataset.get("resolution") or NATIVE_RESOLUTION.get(arch or "")
        batch = _whole(training.get("batch_size"), 1) * _whole(training.get("gradient_accumulation_steps"), 1)
        speed = job.get("it_per_s") if (job.get("step") or 0) >= MIN_MEASURED_STEPS else None
        runs.append(EarlierRun(job["id"], method, arch, resolution if isinstance(resolution, int) else None, batch,
                               _positive(speed), _positive(job.get("images_per_s"))))
    return runs


def training_estimate(runs: list[EarlierRun], method: str, arch: str | None, resolution: int, batch: int,
                      steps: int) -> Estimate | str:
    """An Estimate from the closest earlier run of the same method and family (same resolution and batch
    first), scaled by pixels x batch; else the reason there is no basis."""
    if arch is None:
        return "no basis: the model family is known only once the model loads"
    same = [r for r in runs if r.method == method and r.arch == arch and r.steps_per_s and r.resolution]
    if not same:
        return (f"no basis: no earlier {METHOD_WORDS.get(method, method)} job on a {arch} model here has measured "
                "its speed; the Jobs tab shows the ETA after the first steps")
    basis = min(same, key=lambda r: (r.resolution != resolution, r.batch != batch))  # newest among the closest
    scale = (basis.resolution ** 2 * basis.batch) / (resolution ** 2 * batch)
    speed = basis.steps_per_s * scale
    text = (f"about {format_duration(steps / speed)} at {speed:.2g} steps/s, from job `{basis.job_id}` "
            f"({METHOD_WORDS.get(method, method)}, {arch}, {basis.resolution} px, batch {basis.batch}")
    if scale != 1:
        text += f"; scaled to {resolution} px, batch {batch}"
    return Estimate(steps / speed, text + ")")


def generation_estimate(runs: list[EarlierRun], arch: str | None, resolution: int, count: int) -> Estimate:
    """Time to generate `count` class images: at the speed earlier generations of this family measured here
    (scaled by pixels), else at a stated assumption."""
    measured = [r for r in runs if r.images_per_s and r.arch == arch and r.resolution]
    if measured:
        basis = min(measured, key=lambda r: r.resolution != resolution)
        per_image = 1 / basis.images_per_s * (resolution / basis.resolution) ** 2
        return Estimate(count * per_image, f"about {format_duration(count * per_image)} at {per_image:.2g} s an "
                                           f"image, as job `{basis.job_id}` generated them")
    spec = FAMILIES.get(arch)
    spec = spec if spec is not None and spec.class_image_seconds else DEFAULT_FAMILY
    per_image = spec.class_image_seconds * (resolution / spec.native_resolution) ** 2
    return Estimate(count * per_image, f"about {format_duration(count * per_image)}, assuming {per_image:.2g} s an "
                                       f"image ({spec.id} at {resolution} px, about {ASSUMED_STEPS} steps on a "
                                       "mid-range CUDA GPU; nothing here has measured a generation yet)")


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return {}


def _whole(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _positive(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None

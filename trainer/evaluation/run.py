"""`trainer evaluate`: score every saved checkpoint of a job (and the base model, as the reference) on the
same prompts and seeds, so "which step is best" has an answer beside the samples.

For each checkpoint the base model is loaded once and the checkpoint applied to it the way other tools do
(LoRA through diffusers' load_lora_weights, an embedding through load_textual_inversion, a DreamBooth
checkpoint loaded as the model), then n images are generated with fixed seeds (image i uses seed + i and
prompt i mod len(prompts)) and scored against the training images.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .metrics import LOWER_IS_BETTER, METRICS, Extractors, Score, compute_metrics, default_extractors
from ..methods.spec import spec_for



class EvaluationError(ValueError):
    """Bad input to evaluate (no job file, no checkpoints): one line for the user."""


@dataclass(frozen=True)
class Checkpoint:
    label: str   # "base", "step 100", "final"
    step: int    # 0 for the base model; the final file gets the job's last step (or a large number)
    path: Path | None


@dataclass
class EvaluationOptions:
    prompts: list[str] = field(default_factory=list)
    n: int = 64
    metrics: tuple[str, ...] = METRICS
    seed: int = 1234
    steps: int = 20
    cfg_scale: float = 7.0
    clip_model: str = "openai/clip-vit-large-patch14"
    best_by: str = ""  # empty: fid when computed, else clip


@dataclass
class EvaluationResult:
    rows: list[tuple[Checkpoint, dict[str, Score]]]
    missing: dict[str, str]
    feature_name: str
    n: int
    best: Checkpoint | None
    best_by: str
    out_dir: Path


def find_job(target: Path):
    """A job file, or a folder holding job.toml (a Kiln job folder): the loaded config and its folder."""
    from ..config import load_job

    job_file = target / "job.toml" if target.is_dir() else target
    if not job_file.is_file():
        raise EvaluationError(f"{target}: no job file (expected a job .toml or a folder with job.toml)")
    return load_job(job_file), job_file.parent


def find_checkpoints(cfg) -> list[Checkpoint]:
    """The base model, then each saved `NAME-stepNNNNNNNN.safetensors`, then the final `NAME.safetensors` (the
    files the comparison grid shows too)."""
    from ..grid import STEP_RE, saved_checkpoints

    try:
        files = saved_checkpoints(Path(cfg.output.dir), cfg.output.name)
    except FileNotFoundError as e:
        raise EvaluationError(str(e).removeprefix("grid: ")) from None
    found, last = [Checkpoint("base", 0, None)], 0
    for path in files:
        match = STEP_RE.search(path.stem)
        if match:
            last = int(match.group(1))
            found.append(Checkpoint(f"step {last}", last, path))
        else:
            found.append(Checkpoint("final", _final_step(path, last), path))
    return found


def _final_step(path: Path, last_saved: int) -> int:
    """The step the final file was written at, from its Kohya metadata (ss_steps), else just past the last save."""
    from ..checkpoint import final_step

    steps = final_step(path)
    return steps if steps > last_saved else last_saved + 1


def evaluate_job(target: Path, options: EvaluationOptions, extractors: Extractors | None = None,
                 progress=print) -> EvaluationResult:
    from ..config.native import apply_native_sizes
    from ..models import load_base_model
    from .report import write_report

    cfg, job_dir = find_job(Path(target))
    checkpoints = find_checkpoints(cfg)
    base = load_base_model(cfg.model)
    apply_native_sizes(cfg, base.arch)
    resolution = cfg.dataset.resolution
    real = training_images(cfg, resolution)
    prompts = options.prompts or default_prompts(cfg)
    extractors = extractors or default_extractors(options.clip_model, options.metrics)
    out_dir = job_dir / "evaluation"
    validation = validation_losses(job_dir)
    rows = []
    for checkpoint in checkpoints:
        progress(f"evaluate: {checkpoint.label}: generating {options.n} images")
        with applied(cfg, base, checkpoint) as model:
            fake = generate(model, prompts, options, resolution)
        save_images(fake, out_dir / "images" / checkpoint.label.replace(" ", "-"))
        scores = compute_metrics(real, fake, _prompts_for(prompts, options.n), extractors, options.metrics,
                                 seed=options.seed)
        if checkpoint.step in validation:  # the job's own validation loss at the step this file was saved
            scores["val_loss"] = Score(validation[checkpoint.step])
        rows.append((checkpoint, scores))
    best_by = options.best_by or ("fid" if any("fid" in scores for _, scores in rows) else "clip")
    best = best_checkpoint(rows, best_by)
    missing = {name: reason for name, reason in extractors.missing.items() if name in options.metrics}
    result = EvaluationResult(rows, missing, extractors.feature_name, options.n, best, best_by, out_dir)
    write_report(result)
    return result


def validation_losses(job_dir: Path) -> dict[int, float]:
    """{step: validation loss} from the job's `validation` events (jobs with a [validation] split or folder)."""
    from ..jobs import read_events

    events, _ = read_events(job_dir)
    return {int(e["step"]): float(e["loss"]) for e in events if isinstance(e, dict) and e.get("kind") == "validation"
            and isinstance(e.get("step"), int) and isinstance(e.get("loss"), (int, float))}


def best_checkpoint(rows, metric: str) -> Checkpoint | None:
    """The trained checkpoint (not the base) with the best value of `metric`."""
    scored = [(scores[metric].value, checkpoint) for checkpoint, scores in rows
              if checkpoint.path is not None and metric in scores]
    if not scored:
        return None
    pick = min if LOWER_IS_BETTER.get(metric, True) else max
    return pick(scored, key=lambda pair: pair[0])[1]


def default_prompts(cfg) -> list[str]:
    """The job's sample prompts (their Kohya options dropped), else what the job trains on: the distinct
    training captions (up to 8), or for textual inversion a plain prompt with its token."""
    from ..sampling import parse_prompt_line, sample_defaults

    if cfg.sample.prompts:
        defaults = sample_defaults(cfg)
        return [parse_prompt_line(line, defaults).prompt for line in cfg.sample.prompts]
    if cfg.method == "textual_inversion":
        return [f"a photo of {cfg.textual_inversion.token}"]
    if cfg.method == "dreambooth" and cfg.dreambooth.instance_prompt:
        return [cfg.dreambooth.instance_prompt]
    from ..data import scan_dataset

    captions = list(dict.fromkeys(item.caption for item in scan_dataset(cfg.dataset).instance_items))
    return captions[:8] or ["a photo"]


def training_images(cfg, resolution: int) -> torch.Tensor:
    """The subject images, centre-cropped to resolution x resolution, as floats 0..1 (N,3,H,W)."""
    from ..data import load_image_rgb, resize_and_crop, scan_dataset

    images = [resize_and_crop(load_image_rgb(item.path), (resolution, resolution))[0]
              for item in scan_dataset(cfg.dataset).instance_items]
    return torch.stack([_to_tensor(image) for image in images])


@contextlib.contextmanager
def applied(cfg, base, checkpoint: Checkpoint):
    """The model with `checkpoint` applied (and removed afterwards, so the base is reused)."""
    from ..models import load_base_model
    from ..sampling import make_pipeline

    pipe = make_pipeline(base, "euler_a")
    if checkpoint.path is None:
        yield pipe
    elif cfg.method == "textual_inversion":
        pipe.load_textual_inversion(str(checkpoint.path), token=cfg.textual_inversion.token)
        try:
            yield pipe
        finally:
            pipe.unload_textual_inversion()
    elif spec_for(cfg.method).trains_full_unet(cfg):  # a whole checkpoint (full DreamBooth, fine-tune)
        model_cfg = copy.copy(cfg.model)
        model_cfg.base = str(checkpoint.path)
        yield make_pipeline(load_base_model(model_cfg), "euler_a")
    else:
        pipe.load_lora_weights(str(checkpoint.path))
        try:
            yield pipe
        finally:
            pipe.unload_lora_weights()


@torch.no_grad()
def generate(pipe, prompts: list[str], options: EvaluationOptions, resolution: int) -> torch.Tensor:
    images = []
    for i, prompt in enumerate(_prompts_for(prompts, options.n)):
        # A CPU generator per image: the same picture for the same seed on any device and in any batch.
        generator = torch.Generator("cpu").manual_seed(options.seed + i)
        image = pipe(prompt=prompt, height=resolution, width=resolution, num_inference_steps=options.steps,
                     guidance_scale=options.cfg_scale, generator=generator).images[0]
        images.append(_to_tensor(image))
    return torch.stack(images)


def _prompts_for(prompts: list[str], n: int) -> list[str]:
    return [prompts[i % len(prompts)] for i in range(n)]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def save_images(images: torch.Tensor, folder: Path) -> None:
    from ..atomic import write_atomically

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        write_atomically(folder / f"{i:03d}.png", lambda f, p=pixels: Image.fromarray(p).save(f, format="PNG"))

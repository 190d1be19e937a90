"""Where a run writes: outputs, resumable states, samples, caches and logs. Torch-free, so `check` and the
start of `run` name the same folders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunPaths:
    output_dir: Path
    state_dir: Path
    samples_dir: Path
    cache_dir: Path
    log_dir: Path  # TensorBoard event files


def default_paths(cfg, job_dir: Path | None = None) -> RunPaths:
    out = Path(cfg.output.dir)
    if job_dir is not None:
        return RunPaths(out, job_dir / "state", job_dir / "samples", out / ".kiln-cache", job_dir / "tensorboard")
    name = cfg.output.name
    return RunPaths(out, out / f"{name}-state", out / f"{name}-samples", out / ".kiln-cache", out / f"{name}-logs")

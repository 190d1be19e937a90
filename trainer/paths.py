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


def kiln_cache_dir() -> Path:
    """Kiln's shared cache (config folders, class images): $KILN_CACHE_DIR, else ~/.cache/kiln. When that cannot
    be made or written (a read-only HOME, a service account without one: issue 25), a per-user folder in the
    system's temporary directory, so a run does not fail on a cache it can rebuild."""
    import os
    import tempfile

    chosen = Path(os.environ.get("KILN_CACHE_DIR") or Path.home() / ".cache" / "kiln").expanduser()
    for folder in (chosen, Path(tempfile.gettempdir()) / f"kiln-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                return folder
        except OSError:
            continue
    raise OSError(f"no writable cache folder: {chosen} cannot be written; set KILN_CACHE_DIR to a writable folder")

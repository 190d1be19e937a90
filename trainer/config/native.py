"""Sizes left at 0 in a job mean "what suits the model": filled in once the architecture is known."""
from __future__ import annotations

from dataclasses import replace

from .checks import job_problems
from .errors import ConfigError

NATIVE_RESOLUTION = {"sd15": 512, "sd2": 768, "sdxl": 1024}


def native_dataset_sizes(data, arch: str | None):
    """A copy of a [dataset] section with resolution / min_bucket_reso / max_bucket_reso = 0 resolved for
    `arch` (SD 1.x sizes when the arch is unknown)."""
    resolution = data.resolution or NATIVE_RESOLUTION.get(arch or "", 512)
    low = data.min_bucket_reso or max(64, resolution // 2 // 64 * 64)
    high = data.max_bucket_reso or resolution * 2
    return replace(data, resolution=resolution, min_bucket_reso=low, max_bucket_reso=high)


def apply_native_sizes(cfg, arch: str | None) -> None:
    """Resolve the dataset sizes left at 0 for `arch` (native_dataset_sizes), in place, and re-check the
    bucket range with the real numbers."""
    cfg.dataset = native_dataset_sizes(cfg.dataset, arch)
    problems = job_problems(cfg, complete=False)
    if problems:
        raise ConfigError(problems)

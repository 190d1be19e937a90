"""Writing a job file atomically."""
from __future__ import annotations

import os

from ..atomic import write_text_atomic
from .job import JobConfig


def save_job(cfg: JobConfig, path: str | os.PathLike[str]) -> None:
    """Write `cfg` as TOML (sections and keys in schema order); load_job(path) gives the same values back."""
    write_text_atomic(path, cfg.to_toml())

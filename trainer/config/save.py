"""Writing a job file atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .job import JobConfig


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary file beside `path`, then rename it into place: a reader sees the old file or the
    new one, never half of one, and a crash leaves the old file as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def save_job(cfg: JobConfig, path: str | os.PathLike[str]) -> None:
    """Write `cfg` as TOML (sections and keys in schema order); load_job(path) gives the same values back."""
    write_text_atomic(path, cfg.to_toml())

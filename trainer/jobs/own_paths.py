"""Which paths are a job's own. status.json and events.jsonl are files anyone (a bug, a hand edit, a hostile
user) may have changed, so a path read from them is trusted nowhere: it is used only when it resolves (links
followed) inside the job's folder or the output folder its job.toml names; a class-image folder may also be
the one job.toml names or lie in Kiln's shared class-image cache. Anything else is dropped, never opened."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from .errors import JobFileError
from .launch import read_job_toml

JOB_FILE = "job.toml"
# status.json fields that hold one path, or a list of paths, of the job's own files
PATH_FIELDS = ("latest_sample",)
PATH_LIST_FIELDS = ("outputs",)
CLASS_DIR_FIELD = "class_dir"


class JobFolders:
    """Where a job's files may lie: its folder, its [output] dir, and where its class images may come from.
    job.toml is read only when a path lies outside the job folder (most never do), and then once."""

    def __init__(self, job_dir: Path):
        self.job_dir = Path(job_dir).resolve()

    @functools.cached_property
    def _named(self) -> tuple[Path | None, list[Path]]:
        """(the [output] dir, the class-image folders) job.toml names, relative to the job folder; nothing when
        job.toml cannot be read."""
        try:
            job = read_job_toml((self.job_dir / JOB_FILE).read_text(encoding="utf-8"), str(self.job_dir / JOB_FILE))
        except (OSError, UnicodeDecodeError, JobFileError):
            return None, []
        class_dirs = [_folder(self.job_dir, _section(job, "dreambooth").get("class_dir")),
                      _folder(self.job_dir, _section(job, "dataset").get("reg_dir"))]
        return (_folder(self.job_dir, _section(job, "output").get("dir")),
                [folder for folder in class_dirs if folder is not None])

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether `path` (relative: to the job folder) resolves inside the job's folder or output folder."""
        resolved = _resolved(self.job_dir / path)
        if resolved is None or resolved.is_relative_to(self.job_dir):
            return resolved is not None
        output = self._named[0]
        return output is not None and resolved.is_relative_to(output)

    def owns_class_dir(self, path: str | os.PathLike) -> bool:
        resolved = _resolved(self.job_dir / path)
        return resolved is not None and (self.owns(resolved) or any(
            resolved.is_relative_to(root) for root in self._named[1] + [_class_cache_root()]))


def inside_job(job_dir: Path, name: str) -> Path | None:
    """`job_dir/name` when it resolves inside the job folder; None when it is a link leading elsewhere (a
    planted log.txt -> ~/.ssh/id_rsa would otherwise be shown as the job's log)."""
    path = Path(job_dir) / name
    resolved, folder = _resolved(path), _resolved(Path(job_dir))
    return path if resolved is not None and folder is not None and resolved.is_relative_to(folder) else None


def only_own_paths(status: dict, folders: JobFolders) -> dict:
    """`status` with every path field that is not the job's own dropped (a single path becomes None)."""
    status = dict(status)
    for key in PATH_FIELDS:
        if isinstance(status.get(key), str) and not folders.owns(status[key]):
            status[key] = None
    for key in PATH_LIST_FIELDS:
        if isinstance(status.get(key), list):
            status[key] = [p for p in status[key] if isinstance(p, str) and folders.owns(p)]
    if isinstance(status.get(CLASS_DIR_FIELD), str) and not folders.owns_class_dir(status[CLASS_DIR_FIELD]):
        status[CLASS_DIR_FIELD] = None
    return status


def _section(job: dict, name: str) -> dict:
    value = job.get(name)
    return value if isinstance(value, dict) else {}


def _folder(job_dir: Path, value) -> Path | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return (job_dir / Path(value).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL in the name
        return None


def _class_cache_root() -> Path:
    from ..dreambooth.class_images import cache_root  # no torch there; imported late, as only the UI asks

    return cache_root().resolve()

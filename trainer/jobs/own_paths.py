"""Which paths are a job's own. status.json and events.jsonl are files anyone (a bug, a hand edit, a hostile
user) may have changed, so a path read from them is trusted nowhere: it is used only when it resolves (links
followed) inside the job's folder or the output folder its job.toml names; a class-image folder may also be
the one job.toml names or lie in Kiln's shared class-image cache. Anything else is dropped, never opened."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import JobFileError
from .launch import read_job_toml

JOB_FILE = "job.toml"
# status.json fields that hold one path, or a list of paths, of the job's own files
PATH_FIELDS = ("latest_sample",)
PATH_LIST_FIELDS = ("outputs",)
CLASS_DIR_FIELD = "class_dir"


@dataclass(frozen=True)
class JobFolders:
    """Where a job's files may lie: its folder, its [output] dir, and where its class images may come from."""
    job_dir: Path
    output_dir: Path | None = None
    class_dirs: tuple[Path, ...] = field(default=())

    @property
    def roots(self) -> list[Path]:
        return [self.job_dir] + ([self.output_dir] if self.output_dir is not None else [])

    def owns(self, path: str | os.PathLike) -> bool:
        return _inside_any(path, self.roots)

    def owns_class_dir(self, path: str | os.PathLike) -> bool:
        return _inside_any(path, self.roots + list(self.class_dirs) + [_class_cache_root()])


def read_job_folders(job_dir: Path) -> JobFolders:
    """The job's folders from its job.toml (relative paths are relative to the job folder); only the job folder
    when job.toml cannot be read."""
    job_dir = Path(job_dir).resolve()
    try:
        job = read_job_toml((job_dir / JOB_FILE).read_text(encoding="utf-8"), str(job_dir / JOB_FILE))
    except (OSError, UnicodeDecodeError, JobFileError):
        return JobFolders(job_dir)
    output = _folder(job_dir, _section(job, "output").get("dir"))
    class_dirs = [_folder(job_dir, _section(job, "dreambooth").get("class_dir")),
                  _folder(job_dir, _section(job, "dataset").get("reg_dir"))]
    return JobFolders(job_dir, output, tuple(folder for folder in class_dirs if folder is not None))


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


def _inside_any(path: str | os.PathLike, roots: list[Path]) -> bool:
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL in the name
        return False
    return any(resolved.is_relative_to(root) for root in roots)


def _class_cache_root() -> Path:
    from ..dreambooth.class_images import cache_root  # no torch there; imported late, as only the UI asks

    return cache_root().resolve()

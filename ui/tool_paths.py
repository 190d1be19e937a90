"""Where the Tools tab reads LoRAs from and writes what it makes. Sources: the jobs' saved weights (offered in
dropdowns) and uploads (copied into the workspace). Outputs: only inside the workspace, or beside a source LoRA
that is one of the jobs' own outputs; a bare name goes to <workspace>/lora-tools/, and anything else is
refused by name before a tool runs, so no field can make a tool write (or, with Replace, overwrite) a file
elsewhere. No Gradio here."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from trainer.atomic import write_atomically
from trainer.jobs import JobManager
from trainer.names import BadName, check_name

from .job_view import output_files
from .workspace import Workspace

TOOLS_FOLDER = "lora-tools"  # <workspace>/lora-tools/: tool outputs given by name, and uploaded LoRAs
UPLOADS_FOLDER = "uploads"
WEIGHTS_SUFFIX = ".safetensors"


class ToolPathError(ValueError):
    """An output path a tool may not write; the message names the field and the path."""


def tools_dir(workspace: Workspace) -> Path:
    return workspace.root / TOOLS_FOLDER


def job_loras(manager: JobManager) -> list[tuple[str, str]]:
    """(label, path) of every job's saved weights, newest job first, the final file before its checkpoints."""
    found = []
    for job in manager.list_jobs():
        if job.get("damaged"):
            continue
        for path in manager.own_files(job, weights_files(job)):
            found.append((f"{job.get('title') or job['id']} · {Path(path).name}", path))
    return found


def jobs_with_checkpoints(manager: JobManager) -> list[str]:
    """The ids of the jobs that have saved weights: the only ones a grid can compare."""
    return [job["id"] for job in manager.list_jobs()
            if not job.get("damaged") and manager.own_files(job, weights_files(job))]


def weights_files(job: dict) -> list[str]:
    """The job's saved .safetensors (an evaluation job's outputs are its metrics, not weights)."""
    return [path for path in output_files(job) if path.endswith(WEIGHTS_SUFFIX)]


def keep_upload(workspace: Workspace, uploaded: str) -> str:
    """A LoRA uploaded through the page, copied into <workspace>/lora-tools/uploads/ (Gradio's upload cache is
    temporary): its path there. An upload of the same name is not replaced: a number is added."""
    source = Path(uploaded)
    name = check_name(source.name, "uploaded file name")
    folder = tools_dir(workspace) / UPLOADS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    target, number = folder / name, 1
    while target.exists():
        number += 1
        target = folder / f"{Path(name).stem}-{number}{Path(name).suffix}"
    write_atomically(target, lambda temporary: shutil.copyfile(source, temporary))
    return str(target)


def tool_output(value: str, label: str, workspace: Workspace, manager: JobManager, sources: list[str],
                default_name: str, folder: bool = False) -> str:
    """The absolute path a tool writes, from the field `label`'s `value`:
    - empty: beside the first source LoRA when that may be written to, else <workspace>/lora-tools/<default_name>;
    - a bare name (no folder): <workspace>/lora-tools/<name>;
    - a path: as given, when it lies inside the workspace or beside a source that is a job's own output.
    Links are resolved first; `folder`: the output is a folder (a grid's). ToolPathError, naming the field and the path, for anything else."""
    value = (value or "").strip()
    allowed_beside = _job_output_folders(manager, sources)
    if not value:
        return str(allowed_beside[0] / default_name) if allowed_beside else str(tools_dir(workspace) / default_name)
    given = Path(os.path.expanduser(value))
    if not given.is_absolute() and len(given.parts) == 1:
        try:
            check_name(value, label)
        except BadName as exc:
            raise ToolPathError(str(exc)) from None
        return str(tools_dir(workspace) / value)
    target = (workspace.root / given if not given.is_absolute() else given).resolve()
    if target.is_relative_to(workspace.root.resolve()) or target.parent in allowed_beside:
        if target.is_dir() and not folder:
            raise ToolPathError(f"{label}: {target} is a folder; give a file name")
        return str(target)
    raise ToolPathError(f"{label}: {value} is outside the workspace ({workspace.root}) and not beside the source "
                        f"LoRA; give a file name (it is written to {tools_dir(workspace)}) or a path inside the "
                        "workspace")


def _job_output_folders(manager: JobManager, sources: list[str]) -> list[Path]:
    """The folders of those `sources` that are jobs' own saved weights (resolved), in the order given."""
    known = {Path(path).resolve() for _, path in job_loras(manager)}
    return list(dict.fromkeys(Path(s).resolve().parent for s in sources if s and Path(s).resolve() in known))


def derived_name(source: str, suffix: str) -> str:
    """`NAME-<suffix>.safetensors` for a tool output made from `source`."""
    return f"{Path(source).stem or 'lora'}-{suffix}{WEIGHTS_SUFFIX}"

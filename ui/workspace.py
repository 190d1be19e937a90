"""Where the UI keeps what the user makes: jobs, uploaded datasets and user presets, side by side in one
workspace folder (the parent of --jobs-dir), so one folder holds a user's whole Kiln state."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    jobs_dir: Path

    @classmethod
    def for_jobs_dir(cls, jobs_dir: str | Path) -> "Workspace":
        workspace = cls(Path(jobs_dir).expanduser().resolve())
        for folder in (workspace.jobs_dir, workspace.datasets_dir, workspace.user_presets_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return workspace

    @property
    def root(self) -> Path:
        return self.jobs_dir.parent

    @property
    def datasets_dir(self) -> Path:
        """<workspace>/datasets/<name>/<repeats>_<token> <class>/ — made by the Dataset tab."""
        return self.root / "datasets"

    @property
    def user_presets_dir(self) -> Path:
        """<workspace>/presets-user/*.toml — presets the user saved (shipped ones live in presets/)."""
        return self.root / "presets-user"

    @property
    def served_dirs(self) -> tuple[Path, ...]:
        """The folders whose files the web server may hand out."""
        return self.jobs_dir, self.datasets_dir, self.user_presets_dir, self.scratch_dir

    @property
    def scratch_dir(self) -> Path:
        """Temporary job files for preflight checks and downloads."""
        path = self.root / ".kiln-ui"
        path.mkdir(parents=True, exist_ok=True)
        return path

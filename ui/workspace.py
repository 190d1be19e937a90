"""Where the UI keeps what the user makes: jobs, uploaded datasets and user presets, side by side in one
workspace folder (the parent of --jobs-dir), so one folder holds a user's whole Kiln state."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR_ENV = "KILN_MODELS_DIR"  # where the model field looks for base models (default <workspace>/models)
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class Workspace:
    jobs_dir: Path
    models_dir_setting: Path | None = None

    @classmethod
    def for_jobs_dir(cls, jobs_dir: str | Path, models_dir: str | Path | None = None) -> "Workspace":
        models_dir = models_dir or os.environ.get(MODELS_DIR_ENV) or None
        workspace = cls(Path(jobs_dir).expanduser().resolve(),
                        Path(models_dir).expanduser().resolve() if models_dir else None)
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
    def models_dir(self) -> Path:
        """Base models the model field offers: single files and diffusers folders (configurable)."""
        return self.models_dir_setting or self.root / "models"

    def model_choices(self) -> list[str]:
        """Paths of the models in models_dir: .safetensors/.ckpt files and folders holding model_index.json,
        up to two levels deep (a folder per model family is common)."""
        if not self.models_dir.is_dir():
            return []
        found = []
        for depth in ("*", "*/*"):
            for path in sorted(self.models_dir.glob(depth)):
                if path.name.startswith("."):
                    continue
                if path.is_file() and path.suffix.lower() in MODEL_FILE_SUFFIXES or \
                        path.is_dir() and (path / "model_index.json").is_file():
                    found.append(str(path))
        return found

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

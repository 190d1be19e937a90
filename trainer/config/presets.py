"""Where the shipped presets live."""
from __future__ import annotations

from pathlib import Path


def presets_dir() -> Path:
    """The repository's presets/ folder."""
    return Path(__file__).resolve().parents[2] / "presets"


def list_presets(directory: Path | None = None) -> dict[str, Path]:
    """Preset name (file name without .toml) -> path, sorted by name."""
    folder = presets_dir() if directory is None else Path(directory)
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.toml")) if p.is_file()}

"""Reading older job files. Each MigrationStep turns a dict of one format version into the next; a file is
passed through the steps from its version up to CURRENT_VERSION, and every step says what it changed.

Version 0 is a Kohya_ss file: sd-scripts arguments (flat, or in Kohya's `[*_arguments]` tables) or a Kohya GUI
.json config; kohya.py maps it onto the version-1 key names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError
from .kohya import kohya_to_v1, looks_like_kohya
from .schema import CURRENT_VERSION
from .values import format_value


@dataclass(frozen=True)
class MigrationStep:
    from_version: int
    to_version: int
    apply: Callable[[dict[str, Any], str], tuple[dict[str, Any], list[str]]]  # (data, where) -> (data, notes)
    note: str


MIGRATIONS: tuple[MigrationStep, ...] = (
    MigrationStep(0, 1, kohya_to_v1, "Kohya-style keys become Kiln sections"),
)


def file_version(data: dict[str, Any], where: str) -> int:
    """The format version a raw job dict is written in."""
    if "version" not in data:
        return 0 if looks_like_kohya(data) else CURRENT_VERSION
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError([f"{where}: version = {format_value(version)} is not valid "
                           f"(must be a whole number from 0 to {CURRENT_VERSION})"])
    if version > CURRENT_VERSION:
        raise ConfigError([f"{where}: version = {version} is newer than this Kiln understands (it reads up to "
                           f"version {CURRENT_VERSION}); update Kiln to run this job"])
    return version


def migrate(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """(data in the current format, notes on what changed). `where` names the file in errors."""
    version = file_version(data, where)
    notes: list[str] = []
    while version < CURRENT_VERSION:
        step = next(s for s in MIGRATIONS if s.from_version == version)
        data, step_notes = step.apply(data, where)
        notes += [f"version {step.from_version} -> {step.to_version}: {step.note}"] + step_notes
        version = step.to_version
    return data, notes

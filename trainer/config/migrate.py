"""Reading older job files. Each MigrationStep turns a dict of one format version into the next; a file is
passed through the steps from its version up to CURRENT_VERSION, and every step says what it changed.

Version 0 is a Kohya_ss file: sd-scripts arguments (flat, or in Kohya's `[*_arguments]` tables) or a Kohya GUI
.json config; kohya.py maps it onto the version-1 key names. Version 2 retired `training.fp8_base` (it became
one value of training.base_quantization).

A new version: raise schema.CURRENT_VERSION, add its step here, list the keys it retired in RETIRED_KEYS (so a
file without `version` that still uses one is read as the version before), and raise `version` in presets/."""
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


def fp8_base_to_base_quantization(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """Version 1 -> 2: `training.fp8_base = true` is `training.base_quantization = "fp8"`; false says nothing
    base_quantization does not. Both set to different quantizations is refused: which one was meant is unknown."""
    training = data.get("training")
    if isinstance(training, dict) and "fp8_base" in training:
        training = dict(training)
        fp8 = training.pop("fp8_base")
        if not isinstance(fp8, bool):
            raise ConfigError([f"{where}: training.fp8_base = {format_value(fp8)} must be true or false"])
        other = training.get("base_quantization", "none")
        if fp8 and other not in ("none", "fp8"):
            raise ConfigError([f"{where}: training.fp8_base = true and training.base_quantization = "
                               f"{format_value(other)} ask for two quantizations of the base (fp8_base is now "
                               'base_quantization = "fp8"); remove training.fp8_base to keep '
                               f"{format_value(other)}, or set base_quantization = \"fp8\""])
        if not fp8:
            return {**data, "training": training}, ["training.fp8_base = false dropped (it was the default)"]
        training["base_quantization"] = "fp8"
        return {**data, "training": training}, ['training.fp8_base = true -> training.base_quantization = "fp8" '
                                                "(fp8_base is now one value of base_quantization)"]
    return data, []


MIGRATIONS: tuple[MigrationStep, ...] = (
    MigrationStep(0, 1, kohya_to_v1, "Kohya-style keys become Kiln sections"),
    MigrationStep(1, 2, fp8_base_to_base_quantization, "training.fp8_base became training.base_quantization"),
)

# Keys a version took away: "section.key" -> (the version that retired it, what says it now). A file without a
# `version` that uses one was written before that version; `--set` of one is told what replaced it.
RETIRED_KEYS: dict[str, tuple[int, str]] = {
    "training.fp8_base": (2, 'training.base_quantization = "fp8"'),
}


def file_version(data: dict[str, Any], where: str) -> int:
    """The format version a raw job dict is written in."""
    if "version" not in data:
        return 0 if looks_like_kohya(data) else _version_of_keys(data)
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError([f"{where}: version = {format_value(version)} is not valid "
                           f"(must be a whole number from 0 to {CURRENT_VERSION})"])
    if version > CURRENT_VERSION:
        raise ConfigError([f"{where}: version = {version} is newer than this Kiln understands (it reads up to "
                           f"version {CURRENT_VERSION}); update Kiln to run this job"])
    return version


def _version_of_keys(data: dict[str, Any]) -> int:
    """A version-less Kiln file: the current version, unless it uses a key a later version retired."""
    used = [retired - 1 for name, (retired, _) in RETIRED_KEYS.items()
            if isinstance(section := data.get(name.partition(".")[0]), dict) and name.partition(".")[2] in section]
    return min(used, default=CURRENT_VERSION)


def migrate(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """(data in the current format, notes on what changed). `where` names the file in errors."""
    version = file_version(data, where)
    notes: list[str] = []
    while version < CURRENT_VERSION:
        step = next(s for s in MIGRATIONS if s.from_version == version)
        data, step_notes = step.apply(data, where)
        if step_notes:  # a step that changed nothing in this file says nothing
            notes += [f"version {step.from_version} -> {step.to_version}: {step.note}"] + step_notes
        version = step.to_version
    return data, notes

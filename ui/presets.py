"""Presets: the shipped ones in presets/ (read-only) and the user's own in <workspace>/presets-user/. A preset
is a job file with the values a user still has to fill in allowed to be empty. Loading goes through
trainer.config, so old versions and Kohya files are migrated (with notes) and bad ones say which key and why."""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from trainer.atomic import write_text_atomic
from trainer.config import ConfigError, JobConfig, find_field, list_presets, load_job, parse_job
from trainer.names import BadName, check_name, path_inside

SHIPPED, USER = "shipped", "user"
PRESET_SUFFIX = ".toml"


class PresetError(ValueError):
    """A preset action that cannot be done (saving over a shipped preset, a bad name...)."""


@dataclass(frozen=True)
class PresetRef:
    kind: str   # SHIPPED or USER
    name: str

    @property
    def key(self) -> str:
        """The dropdown value: "shipped:demo-lora", "user:my dog"."""
        return f"{self.kind}:{self.name}"

    @property
    def label(self) -> str:
        return self.name if self.kind == SHIPPED else f"{self.name} (mine)"

    @classmethod
    def parse(cls, key: str) -> "PresetRef":
        kind, _, name = (key or "").partition(":")
        if kind not in (SHIPPED, USER) or not name:
            raise PresetError(f"choose a preset first (got {key!r})")
        try:
            return cls(kind, check_name(name, "preset name"))
        except BadName as exc:
            raise PresetError(str(exc)) from None


class PresetStore:
    def __init__(self, user_dir: Path, shipped_dir: Path | None = None):
        self.user_dir = Path(user_dir)
        self.shipped_dir = shipped_dir

    def path(self, ref: PresetRef) -> Path:
        found = self._all(ref.kind).get(ref.name)
        if found is None:
            raise PresetError(f"there is no {ref.kind} preset called {ref.name!r}")
        return found

    def _all(self, kind: str) -> dict[str, Path]:
        return list_presets(self.shipped_dir) if kind == SHIPPED else list_presets(self.user_dir)

    def refs(self, method: str) -> list[PresetRef]:
        """Presets for `method`: shipped first, then the user's. Files whose method cannot be read cheaply
        (broken or Kohya-style ones) are listed everywhere, so loading them shows what is wrong."""
        return [PresetRef(kind, name) for kind in (SHIPPED, USER) for name, path in self._all(kind).items()
                if _declared_method(path) in (method, None)]

    def choices(self, method: str) -> list[tuple[str, str]]:
        return [(ref.label, ref.key) for ref in self.refs(method)]

    def load(self, ref: PresetRef) -> JobConfig:
        """The preset as a config (ConfigError when it is not valid). A relative output folder in a preset
        means "beside the preset", which is no place for a UI job: it is cleared, so the job's own folder is used."""
        path = self.path(ref)
        cfg = load_job(path, complete=False)
        if not _output_dir_is_absolute(path):
            cfg.output.dir = ""
        return cfg

    def save(self, ref: PresetRef, cfg: JobConfig) -> PresetRef:
        """Replace a user preset; shipped presets are never written."""
        if ref.kind == SHIPPED:
            raise PresetError(f"{ref.name!r} is a shipped preset and is never overwritten; use Save as")
        return self._write(ref.name, cfg)

    def save_as(self, name: str, cfg: JobConfig) -> PresetRef:
        """A new user preset; an existing one of that name is not replaced (use Save for that)."""
        name = (name or "").strip()
        try:
            check_name(name, "preset name")
        except BadName as exc:
            raise PresetError(str(exc)) from None
        if name in self._all(USER):
            raise PresetError(f"you already have a preset called {name!r}; choose it and press Save to replace it")
        return self._write(name, cfg)

    def delete(self, ref: PresetRef) -> None:
        if ref.kind == SHIPPED:
            raise PresetError(f"{ref.name!r} is a shipped preset and cannot be deleted")
        self.path(ref).unlink()

    def _write(self, name: str, cfg: JobConfig) -> PresetRef:
        try:  # checked again after resolving symlinks: a link in presets-user must not lead elsewhere
            path = path_inside(self.user_dir, name, "preset name", PRESET_SUFFIX)
        except BadName as exc:
            raise PresetError(str(exc)) from None
        text = cfg.to_toml() if cfg.output.dir else _with_job_output(cfg)
        write_text_atomic(path, text)
        return PresetRef(USER, name)


def _with_job_output(cfg: JobConfig) -> str:
    # An empty output folder is saved as the schema's relative default, which loads back as empty (above).
    cfg.output.dir = find_field("output.dir").default
    try:
        return cfg.to_toml()
    finally:
        cfg.output.dir = ""


def _declared_method(path: Path) -> str | None:
    try:
        method = tomllib.loads(path.read_text(encoding="utf-8")).get("method")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return method if isinstance(method, str) else None


def _output_dir_is_absolute(path: Path) -> bool:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    value = data.get("output", {}).get("dir") if isinstance(data.get("output"), dict) else data.get("output_dir")
    return isinstance(value, str) and os.path.isabs(os.path.expanduser(value))


def import_config_file(path: Path, base_dir: Path, fallback_method: str) -> JobConfig:
    """A job TOML or a Kohya_ss GUI JSON config, migrated and validated (complete=False: prompts and tokens
    may still be empty). The migration notes list what was mapped and which Kohya keys were ignored. A Kohya
    file whose keys do not tell the method gets `fallback_method` (the tab it is imported into)."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() != ".json":
        return load_job(path, complete=False)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{Path(path).name}: not valid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{Path(path).name}: a Kohya config is a JSON object of settings"])
    flat = {key: value for key, value in data.items() if value not in ("", None)}  # Kohya GUI writes "" for unset
    try:
        return parse_job(flat, source=Path(path).name, base_dir=str(base_dir), complete=False)
    except ConfigError as exc:
        if "method" in flat or not any(p.endswith("method is required but missing") for p in exc.problems):
            raise
    return parse_job({**flat, "method": fallback_method}, source=Path(path).name, base_dir=str(base_dir),
                     complete=False)

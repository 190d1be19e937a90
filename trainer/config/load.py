"""Reading a job: TOML text or a dict -> migration -> per-field type/range checks -> overrides -> path
resolution -> cross-field checks -> JobConfig. Every problem found is collected into one ConfigError."""
from __future__ import annotations

import copy
import difflib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Iterable

from .checks import job_problems, job_warnings
from .errors import ConfigError
from .job import SECTION_CLASSES, JobConfig
from .migrate import RETIRED_KEYS, migrate
from .schema import (CURRENT_VERSION, FIELDS, HUB_ID, PATH, PICKLE_SUFFIXES, SECTIONS, TABLE_LIST, Field, find_field,
                     section_fields)
from .values import convert_value, format_value, parse_override_value

MEMORY_SOURCE = "<memory>"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def load_job(path: str | os.PathLike[str], overrides: Iterable[str] = (), *, complete: bool = True) -> JobConfig:
    """Read, migrate and validate a job file: Kiln TOML, a Kohya sd-scripts TOML, or a Kohya GUI .json config.
    Relative paths in the file resolve against its folder; those in `overrides` ("section.key=value") against the
    current directory. complete=False skips the values a user still has to fill in (for presets and forms)."""
    data = read_job_document(path)
    absolute = os.path.abspath(path)
    return _build(data, str(path), absolute, os.path.dirname(absolute), overrides, complete)


def read_job_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw dict of a job file (.json is read as JSON, anything else as TOML), or a ConfigError that says
    what is wrong with the file."""
    where = str(path)
    is_json = str(path).lower().endswith(".json")
    kind = "JSON" if is_json else "TOML"
    try:
        text = Path(path).read_bytes().decode("utf-8")
        data = json.loads(text) if is_json else tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError([f"{where}: no such job file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{where}: is a folder, not a job file"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: is not UTF-8 text, so it cannot be a job file"]) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([f"{where}: {kind} syntax error: {exc}"]) from None
    except RecursionError:  # the parsers recurse per nesting level; a hostile file runs out of stack
        raise ConfigError([f"{where}: {kind} nests arrays or tables too deeply to be a job file"]) from None
    except OSError as exc:
        raise ConfigError([f"{where}: cannot be read ({exc.strerror})"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: a job file holds keys and values (a JSON object), not a {type(data).__name__}"])
    return data


def parse_job(data: dict[str, Any], source: str = MEMORY_SOURCE, overrides: Iterable[str] = (), *,
              base_dir: str | None = None, complete: bool = True) -> JobConfig:
    """Validate a job given as a dict (as tomllib returns it). Relative paths resolve against `base_dir`,
    by default the folder of `source` when that is a file path, else the current directory."""
    if base_dir is None:
        base_dir = os.getcwd() if source.startswith("<") else os.path.dirname(os.path.abspath(source))
    return _build(copy.deepcopy(data), source, source, base_dir, overrides, complete)


def _build(data: dict[str, Any], where: str, source: str, base_dir: str, overrides: Iterable[str],
           complete: bool) -> JobConfig:
    data, notes = migrate(data, where)
    values: dict[str, Any] = {f.name: copy.deepcopy(f.default) for f in FIELDS}
    bases = {f.name: base_dir for f in FIELDS}  # which folder a relative path is relative to
    invalid: set[str] = set()  # names whose given value was rejected (so "missing" is not said as well)
    problems = [f"{where}: {p}" for p in _read_file_values(data, values, invalid)]
    cwd = os.getcwd()
    for override in overrides:
        problem, name = _apply_override(override, values, invalid)
        if problem:
            problems.append(f"--set {override}: {problem}")
        elif name:
            bases[name] = cwd
    for field in FIELDS:
        if field.type == PATH:
            values[field.name] = _resolve_path(values[field.name], bases[field.name])
        elif field.model_ref:
            values[field.name] = _resolve_model_ref(values[field.name], bases[field.name])
        if field.type == TABLE_LIST:
            values[field.name] = [_resolve_table_paths(table, field, bases[field.name]) for table in values[field.name]]
        replaced = field.required_unless and values[field.required_unless]
        if (field.required and not values[field.name] and not replaced and field.name not in invalid
                and (complete or field.name == "method")):
            alternative = f" (or set {field.required_unless})" if field.required_unless else ""
            problems.append(f"{where}: {field.name} is required but missing{alternative}")
    cfg = _job_from_values(values, source, notes)
    problems += [f"{where}: {p}" for p in job_problems(cfg, complete)]
    if problems:
        raise ConfigError(problems)
    cfg.warnings = job_warnings(cfg)
    return cfg


def _read_file_values(data: dict[str, Any], values: dict[str, Any], invalid: set[str]) -> list[str]:
    problems: list[str] = []
    for key, value in data.items():
        if key in SECTIONS[1:]:
            if not isinstance(value, dict):
                problems.append(f"`{key}` must be a table ([{key}] followed by its keys), not a single value")
                continue
            for sub_key, sub_value in value.items():
                problems += _set_value(f"{key}.{sub_key}", sub_value, values, invalid)
        elif find_field(key) is None and isinstance(value, dict) and not _CONTROL.search(key):
            problems.append(_unknown_section(key))
        else:
            problems += _set_value(key, value, values, invalid)
    return problems


def _set_value(name: str, value: Any, values: dict[str, Any], invalid: set[str]) -> list[str]:
    if _CONTROL.search(name):
        return [f"the key {format_value(name)} contains a control character (such as a NUL byte); keys are plain "
                "names like training.learning_rate"]
    field = find_field(name)
    if field is None:
        return [unknown_key_message(name)]
    converted, problem = convert_value(field, value)
    if problem:
        invalid.add(name)
        return [problem]
    values[name] = converted
    return []


def _apply_override(override: str, values: dict[str, Any], invalid: set[str]) -> tuple[str | None, str | None]:
    """(problem, None) or (None, the name it set)."""
    name, sep, text = override.partition("=")
    name = name.strip()
    if not sep or not name:
        return "expected section.key=value", None
    field = find_field(name)
    if field is None:
        section = name.partition(".")[0]
        if "." in name and section not in SECTIONS:
            return _unknown_section(section), None
        return unknown_key_message(name), None
    if field.hidden:
        return f"{name} cannot be overridden", None
    problems = _set_value(name, parse_override_value(field, text), values, invalid)
    return (problems[0], None) if problems else (None, name)


def unknown_key_message(name: str) -> str:
    """`name` is not a key, with the closest real key: the same key in another section first (a key put
    under the wrong table), then a near spelling in its own section, then a near spelling anywhere."""
    section, _, key = name.rpartition(".")
    where = f"a key of [{section}]" if section else "a top-level key"
    if name in RETIRED_KEYS:  # a file's own retired keys are migrated before this; an override's are not
        version, now = RETIRED_KEYS[name]
        return f"`{name}` is not a key since format version {version}; use {now}"
    visible = [f for f in FIELDS if not f.hidden]
    same_key = [f.name for f in visible if f.key == key and f.section != section]
    own = difflib.get_close_matches(key, [f.key for f in section_fields(section) if not f.hidden], 1, 0.6)
    anywhere = difflib.get_close_matches(key, [f.key for f in visible], 1, 0.7)
    if same_key:
        guess = same_key[0]
    elif own:
        guess = f"{section}.{own[0]}" if section else own[0]
    elif anywhere:
        guess = next(f.name for f in visible if f.key == anywhere[0])
    else:
        return f"`{name}` is not {where}"
    return f"`{name}` is not {where}; did you mean `{guess}`?"


def _unknown_section(section: str) -> str:
    close = difflib.get_close_matches(section, SECTIONS[1:], 1, 0.6)
    hint = f"; did you mean [{close[0]}]?" if close else f" (sections: {', '.join(SECTIONS[1:])})"
    return f"[{section}] is not a section{hint}"


def _resolve_path(value: str, base_dir: str) -> str:
    if not value:
        return value  # empty means "not set" (e.g. dreambooth.class_dir = the shared cache)
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def _resolve_table_paths(table: dict[str, Any], field: Field, base_dir: str) -> dict[str, Any]:
    """One table of a TABLE_LIST field with its path keys resolved like the section's own paths."""
    return {key: _resolve_path(value, base_dir) if value and item.type == PATH else value
            for item in field.item_fields for key, value in [(item.key, table[item.key])]}


def _resolve_model_ref(value: str, base_dir: str) -> str:
    """Model references are paths unless they are builtin: ids or look like hub ids ("org/name") and no
    such path exists next to the job file."""
    if not value or value.startswith("builtin:"):
        return value
    candidate = os.path.join(base_dir, os.path.expanduser(value))
    is_hub_id = (HUB_ID.fullmatch(value) and not value.startswith(".")
                 and not value.lower().endswith(_WEIGHT_SUFFIXES) and not os.path.exists(candidate))
    return value if is_hub_id else os.path.normpath(candidate)


def _job_from_values(values: dict[str, Any], source: str, notes: list[str]) -> JobConfig:
    sections = {name: cls(**{f.key: values[f.name] for f in section_fields(name)})
                for name, cls in SECTION_CLASSES.items()}
    return JobConfig(method=values["method"], version=CURRENT_VERSION, source=source, migration_notes=notes,
                     **sections)


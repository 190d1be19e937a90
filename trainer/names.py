"""Names that people type (presets, datasets, jobs) and that become one file or folder name. A name is a name,
never a path: no separators, no `..`, no control characters, no leading dot (hidden files are Kiln's own
temporaries), a length every file system can hold. Unicode letters are kept: `mon chat été` is a good name.

`path_inside` is the one way the UI turns a name into a path, and it checks the result after resolving
symlinks, so a link planted inside a folder cannot send a write outside it. Standard library only: the UI,
the config and the job layers import it."""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path

MAX_NAME_CHARS = 100
MAX_NAME_BYTES = 200  # file systems allow 255 bytes; room is left for suffixes such as `.toml` or `-step…`
_ALLOWED_FORMAT_CHARS = {"\u200d"}  # zero-width joiner: part of many emoji, harmless in a file name


class BadName(ValueError):
    """A name that cannot be a file or folder name; the message says which name, what is wrong and what is allowed."""


def name_problem(name: object) -> str | None:
    """What is wrong with `name` as a single file or folder name, or None when it is fine."""
    if not isinstance(name, str):
        return f"it must be text, not {type(name).__name__}"
    if not name.strip():
        return "it is empty"
    if name != name.strip():
        return "it must not start or end with a space"
    if "/" in name or "\\" in name:
        return "it must not contain '/' or '\\' (a name, not a path)"
    if name.startswith("."):
        return "it must not start with a dot"
    for char in name:
        category = unicodedata.category(char)
        if (category.startswith("C") and char not in _ALLOWED_FORMAT_CHARS) or category in ("Zl", "Zp"):
            return f"it must not contain control or invisible characters (found U+{ord(char):04X})"
    if len(name) > MAX_NAME_CHARS or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"it is too long (at most {MAX_NAME_CHARS} characters and {MAX_NAME_BYTES} bytes in UTF-8)"
    return None


def check_name(name: object, what: str) -> str:
    """`name` unchanged when it is a usable name; BadName naming `what` (e.g. "preset name") otherwise."""
    problem = name_problem(name)
    if problem is not None:
        shown = repr(name if not isinstance(name, str) or len(name) <= 120 else name[:120] + "…")
        raise BadName(f"{what} {shown} is not usable: {problem}; allowed: letters of any language, digits, "
                      f"spaces and punctuation, up to {MAX_NAME_CHARS} characters")
    return name


def path_inside(folder: str | os.PathLike, name: object, what: str, suffix: str = "") -> Path:
    """`folder/<name><suffix>` after checking the name and that the path, with symlinks resolved, is a direct
    child of the resolved folder (a symlink there pointing elsewhere is refused)."""
    check_name(name, what)
    base = Path(folder).resolve()
    target = base / f"{name}{suffix}"
    resolved = target.resolve()
    if resolved.parent != base:
        raise BadName(f"{what} {name!r} is not usable: it leads outside {base} (to {resolved}, through a "
                      "symbolic link); choose another name")
    return target

"""Small file helpers shared by the job writers and readers: JSON text, tolerant reads, log tails. Writing goes
through trainer/atomic.py."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def json_text(obj: Any) -> str:
    """A JSON file's text (status.json): indented, paths as strings."""
    return json.dumps(obj, indent=1, default=_json_default) + "\n"


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when the file does not exist (yet)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return json.loads(text)


def json_line(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


def tail_lines(path: Path, n: int, chunk: int = 64 * 1024) -> list[str]:
    """The last `n` lines of a text file, read from the end so a long log costs little. A line rewritten with
    carriage returns (a progress bar) shows only its last state, as a terminal would."""
    if n <= 0:
        return []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        data = b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()  # the file ends with a newline
    if pos > 0:
        lines = lines[1:]  # the first line may be cut in the middle
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines[-n:]]


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")

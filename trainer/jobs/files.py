"""Small file helpers shared by the job writers and readers: atomic replacement, tolerant reads, log tails."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic


def atomic_write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    """Readers see the old or the new file, never a half-written one; `durable` also fsyncs, for files written
    once and meant to survive a power cut (status.json, rewritten every second, is not)."""
    write_bytes_atomic(path, data, durable)


def atomic_write_text(path: Path, text: str, durable: bool = False) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_json_atomic(path: Path, obj: Any, durable: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n", durable=durable)


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

"""Atomic file writes, for every file Kiln writes: a file appears at its final name complete, or not at all.
No torch here: the config, jobs and UI layers use it too."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it into place. If `write` raises,
    the temporary file is removed and whatever was at `path` before is left untouched. `durable` fsyncs first,
    so a power cut cannot leave an empty file under the final name (status files that are rewritten every
    second skip it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name in the same folder, so the final rename stays on one filesystem and is atomic.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_bytes(data), durable)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), durable)

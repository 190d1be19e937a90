"""Atomic writes, for every file and folder Kiln writes: a file or folder appears at its final name complete,
or not at all, and whatever was there before stays intact until the new one is complete.
No torch here: the config, jobs and UI layers use it too.

`durable` (fsync before the rename) defaults to True: a power cut or a crash of the machine must never leave
an empty or half-written file under a name the user relies on (weights, job files, training states). Only
files that are rewritten every second or so and rebuilt from the worker's own knowledge (status.json, control
files, pid files) pass durable=False, because an fsync per rewrite costs more than the file is worth.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

# Errors by which a full disk or an exhausted quota shows itself.
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Libraries that write through their own code (safetensors in Rust, torch's zip writer in C++) raise their own
# exception types with the OS message inside, so the message is the only trace of a full disk.
_DISK_FULL_TEXT = ("no space left on device", "storagefull", "os error 28", "disk quota exceeded")


class DiskFullError(OSError):
    """The disk (or quota) filled up while saving `path`; the partial file was removed, older files are intact."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(f"disk full while saving {path}; earlier files are intact")
        self.errno = errno.ENOSPC
        self.path = Path(path)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or an exception it was raised from) says that the disk or quota is full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it into place. If `write` raises,
    the temporary file is removed and whatever was at `path` before is left untouched; a full disk raises
    DiskFullError naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name in the same folder, so the final rename stays on one filesystem and is atomic.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(path) from error
        raise
    if durable:
        _fsync_folder(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_bytes(data), durable)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_folder_atomically(path: str | os.PathLike, write: Callable[[Path], None], replace: bool = False,
                            durable: bool = True) -> Path:
    """Call `write(tmp)` to fill a temporary folder beside `path`, then rename it into place.

    With replace=False an existing folder at `path` raises FileExistsError (after the temporary folder is
    removed): concurrent builders of the same content-keyed folder let the first one win. With replace=True
    the old folder is moved aside and deleted only after the new one is in place, so a crash in between
    leaves one complete folder (the old one under a hidden name, the new one under `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        write(tmp)
        if durable:
            for file in (p for p in tmp.rglob("*") if p.is_file()):
                _fsync_file(file)
        if path.exists():
            if not replace:
                raise FileExistsError(errno.EEXIST, "already exists", str(path))
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():  # the new folder did not arrive: put the old one back
            os.replace(old, path)
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(path) from error
        raise
    shutil.rmtree(old, ignore_errors=True)
    if durable:
        _fsync_folder(path.parent)
    return path


def remove_leftovers(folder: str | os.PathLike) -> None:
    """Delete the temporary files and folders a killed writer left in `folder` (they are never read)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for leftover in folder.glob(".*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as written:
        os.fsync(written.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself survive a power cut (POSIX only; Windows cannot open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

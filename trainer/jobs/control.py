"""Commands from the UI to a running worker: one small file per command in jobs/<id>/control/, plus signals.

Files, not signals, are the main road: they work the same under `accelerate launch` (whose launcher would
have to forward signals to every rank), survive the sender exiting, and keep their order."""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import stat
import sys
import time
from pathlib import Path

from ..atomic import write_text_atomic
from .files import json_line

CONTROL_DIR = "control"
COMMANDS = ("stop", "pause", "resume", "save", "sample")
COMMAND_SUFFIX = ".cmd"

_sequence = itertools.count()  # orders two commands sent within the same clock tick


def send(job_dir: str | os.PathLike, command: str) -> Path:
    """Queue `command` for the worker of `job_dir`; returns the command file written."""
    if command not in COMMANDS:
        raise ValueError(f"unknown job command {command!r}; expected one of {', '.join(COMMANDS)}")
    folder = Path(job_dir) / CONTROL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    # Names sort by send time: nanoseconds, then sender pid and a counter so no two senders share a name.
    path = folder / f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}-{command}{COMMAND_SUFFIX}"
    # Not fsynced: a command lost in a power cut no longer matters (the worker it was for is gone too).
    write_text_atomic(path, json_line({"command": command, "sent_at": time.time()}) + "\n", durable=False)
    return path


def _command_files(folder: Path) -> list[Path]:
    """Entries named like commands, in sending order; temporary files start with "." and never match."""
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith(COMMAND_SUFFIX) and not p.name.startswith("."))
    except OSError:  # no folder yet, or a file where the folder should be
        return []


def clear(job_dir: str | os.PathLike) -> None:
    """Drop commands left over from an earlier run of the job, so an old "stop" cannot end a new run."""
    for path in _command_files(Path(job_dir) / CONTROL_DIR):
        with contextlib.suppress(OSError):
            path.unlink()


class ControlChannel:
    """The worker's side. With enabled=False (DDP ranks other than 0) the command files are left for rank 0;
    signals still count, since a terminal's Ctrl-C reaches every rank."""

    def __init__(self, job_dir: str | os.PathLike | None, enabled: bool = True):
        self.folder = Path(job_dir) / CONTROL_DIR if job_dir is not None and enabled else None
        self._from_signals: list[str] = []
        self._interrupts = 0
        self._ignored: set[str] = set()  # entries that are not command files (a folder, say): warned about once

    def poll(self) -> list[str]:
        """Pending commands, oldest first; each is returned once (its file is deleted)."""
        commands: list[str] = []
        while self._from_signals:
            commands.append(self._from_signals.pop(0))
        if self.folder is None:
            return commands
        # A worker never dies from what it finds here: anything but a plain command file is left alone.
        for path in _command_files(self.folder):
            command = path.name[: -len(COMMAND_SUFFIX)].rsplit("-", 1)[-1]
            try:
                if not stat.S_ISREG(path.lstat().st_mode):
                    raise IsADirectoryError(f"{path} is not a plain file")
                path.unlink()
            except FileNotFoundError:
                continue  # already taken
            except OSError as exc:
                if path.name not in self._ignored:
                    self._ignored.add(path.name)
                    print(f"kiln: warning: ignoring {path}: not a command file ({exc})", file=sys.stderr, flush=True)
                continue
            if command in COMMANDS:
                commands.append(command)
        return commands

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask for a graceful stop (finish the step, save, exit); a second SIGINT stops now
        by raising KeyboardInterrupt; SIGUSR1 asks for a save. Call from the main thread."""
        signal.signal(signal.SIGTERM, self._on_terminate)
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGUSR1, self._on_save_signal)

    def _on_terminate(self, signum: int, frame: object) -> None:
        self._from_signals.append("stop")

    def _on_interrupt(self, signum: int, frame: object) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            raise KeyboardInterrupt
        self._from_signals.append("stop")
        print("kiln: stopping after this step and saving (Ctrl-C again stops at once, without saving)",
              file=sys.stderr, flush=True)

    def _on_save_signal(self, signum: int, frame: object) -> None:
        self._from_signals.append("save")

"""Is a worker still alive, and stopping it by force. Linux first: /proc tells a live process from a zombie
and from an unrelated process that was given a dead worker's pid."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")


def pid_runs_job(pid: int, job_dir: Path) -> bool:
    """True when `pid` is a live process started for `job_dir` (its command line names the folder).
    Without /proc (not Linux) only "some process has this pid" can be known."""
    if not PROC.is_dir():
        return _pid_exists(pid)
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        cmdline = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat[stat.rfind(")") + 2:].startswith(("Z", "X")):  # exited, waiting to be reaped
        return False
    folder = str(job_dir)
    return any(arg == folder or arg.startswith(folder + os.sep)
               for arg in cmdline.decode(errors="replace").split("\0"))


def kill_worker(pids: list[int], job_dir: Path, wait_s: float = 5.0) -> bool:
    """SIGKILL every listed process still running the job, with its process group (the accelerate launcher
    and its ranks); True when none is left alive after `wait_s`."""
    for pid in pids:
        if not pid_runs_job(pid, job_dir):
            continue
        try:
            if os.getpgid(pid) == pid and pid != os.getpgid(0):  # a worker leads its own session
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while any(pid_runs_job(pid, job_dir) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True

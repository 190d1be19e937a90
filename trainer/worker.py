"""The one harness every job worker runs in (training: `trainer run`; captioning: `trainer caption`). It opens
the job's channels (status.json/events.jsonl through a RunReporter, commands through a ControlChannel) and
turns how the work ended into the job's final state, a one-line message and the exit code, the same way for
every kind of job (docs/job-protocol.md)."""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the verbs' parsers import this module; the reporter (tqdm) only comes with the work
    from .jobs import ControlChannel
    from .progress import RunReporter

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 3


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` (or the only process): the one that writes the job's files."""
    return os.environ.get("RANK", "0") == "0"


def job_channels(job_dir: Path | None) -> tuple[RunReporter, ControlChannel]:
    """The reporter (status files when there is a job folder; the console on rank 0) and the command channel.
    Without a job folder, signals (Ctrl-C, SIGTERM) still reach the channel for a graceful stop."""
    from .jobs import ControlChannel, StatusWriter
    from .progress import RunReporter

    main = is_main_process()
    status = StatusWriter(job_dir, enabled=main) if job_dir is not None else None
    return RunReporter(status=status, console=main), ControlChannel(job_dir, enabled=main)


def say_error(message: str) -> None:
    print(f"kiln: error: {message}", file=sys.stderr, flush=True)


def run_reported(work: Callable[[], int], reporter: RunReporter, user_errors: tuple[type[BaseException], ...],
                 interrupted: str, log_user_tracebacks: bool = False) -> int:
    """`work()`'s exit code; when it raises, the job's final state and the matching exit code:
    a problem with the user's input (`user_errors`) -> failed, its message, EXIT_BAD_INPUT (the traceback too,
    into the job's log, when `log_user_tracebacks`); an immediate interrupt (a second Ctrl-C) -> stopped with
    `interrupted` as the reason, EXIT_STOPPED; anything else (a bug, a library failure) -> failed with a
    one-line message, the traceback to stderr, EXIT_FAILED."""
    try:
        return work()
    except user_errors as error:
        from .atomic import DiskFullError, is_disk_full

        disk_full = isinstance(error, DiskFullError)
        if log_user_tracebacks and not disk_full and getattr(error, "traceback_useful", True):
            traceback.print_exc()
        try:
            reporter.close()
            reporter.state("failed", error=str(error))
        except Exception as status_error:  # on a full disk even status.json may not be writable
            if not (disk_full and is_disk_full(status_error)):
                raise
        say_error(str(error))
        return EXIT_FAILED if disk_full else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        reporter.close()
        reporter.state("stopped", error=interrupted)
        say_error("interrupted")
        return EXIT_STOPPED
    except Exception as error:
        reporter.close()
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}"
        reporter.state("failed", error=message)
        say_error(f"{message} (traceback above)")
        return EXIT_FAILED

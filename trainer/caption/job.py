"""Running captioning as a job: options from a job file, progress to status.json/events.jsonl, stop and pause
commands obeyed between batches (docs/job-protocol.md). Without a job folder the same code runs in the
foreground with a progress bar, and Ctrl-C stops it after the current batch."""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

from ..jobs import ControlChannel, StatusWriter
from ..progress import RunReporter
from .errors import CaptionError
from .options import CaptionOptions, options_from_mapping

JOB_TASK = "caption"  # top-level `task` of a caption job file; training jobs have none
PHASE_LOADING = "loading"
PHASE_CAPTIONING = "captioning"
STATUS_INTERVAL_S = 1.0
PAUSE_POLL_S = 0.25


def caption_job_toml(options: CaptionOptions) -> str:
    """A job file for JobManager.create: `task = "caption"` and the options as a [caption] table."""
    import toml

    values = {name: value for name, value in dataclasses.asdict(options).items() if value is not None}
    return toml.dumps({"task": JOB_TASK, JOB_TASK: values})


def read_caption_job(path: Path) -> dict:
    """The [caption] table of a caption job file, with a relative `dir` resolved against the file's folder."""
    try:
        job = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise CaptionError(f"cannot read the caption job {path}: {error}") from None
    if job.get("task") != JOB_TASK or not isinstance(job.get(JOB_TASK), dict):
        raise CaptionError(f'{path} is not a caption job: it needs task = "{JOB_TASK}" and a [{JOB_TASK}] table')
    values = dict(job[JOB_TASK])
    if isinstance(values.get("dir"), str) and values["dir"]:
        values["dir"] = str(Path(path).parent / Path(values["dir"]).expanduser())
    options_from_mapping(values, str(path))  # checks names and types now, with the file's name in the message
    return values


class CaptionWatcher(RunReporter):
    """The run's link to the outside: the worker harness's reporter (status.json/events.jsonl when there is a
    job folder, the console) plus image progress and the commands that arrive through the control folder or
    as signals."""

    def __init__(self, job_dir: Path | None, console: bool):
        super().__init__(status=StatusWriter(job_dir) if job_dir is not None else None, console=console)
        self.controls = ControlChannel(job_dir)
        self._started = time.monotonic()
        self._last_status = 0.0

    def progress(self, done: int, total: int) -> None:
        if self.console and self.bar is None and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="image", file=sys.stderr, dynamic_ncols=True, desc="captioning")
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        now = time.monotonic()
        if now - self._last_status < STATUS_INTERVAL_S and done < total:
            return
        rate = done / (now - self._started) if now > self._started else None
        eta = (total - done) / rate if rate else None
        self._status(step=done, total_steps=total, it_per_s=rate, eta_s=eta)
        self._event("progress", step=done, total_steps=total, it_per_s=rate, eta_s=eta)
        self._last_status = now

    def should_stop(self) -> bool:
        """True once a stop arrives. A pause blocks here (the current batch is finished) until resume or stop."""
        paused = False
        while True:
            for command in self.controls.poll():
                if command == "stop":
                    self.state("stopping")
                    return True
                if command == "pause" and not paused:
                    paused = True
                    self.state("paused")
                elif command == "resume" and paused:
                    paused = False
                    self.state("running")
                elif command in ("save", "sample"):
                    self.warning(f"'{command}' does nothing in a caption job: each caption is saved as it is made")
            if not paused:
                return False
            if self.status is not None:
                self.status.heartbeat()
            time.sleep(PAUSE_POLL_S)


def run_caption_job(options: CaptionOptions, job_dir: Path | None = None, console: bool = True) -> int:
    """Caption (and/or report) as `options` say, reporting to `job_dir` when given; returns the exit code:
    0 done or stopped on request, 1 some images failed or a crash, 2 bad input, 3 interrupted at once."""
    from ..data import DatasetError
    from ..worker import EXIT_FAILED, EXIT_OK, run_reported
    from .methods import make_captioner
    from .report import (dataset_phrase_frequency, dataset_tag_frequency, format_phrase_frequency,
                         format_tag_frequency)
    from .runner import caption_dataset

    watcher = CaptionWatcher(job_dir, console)

    def work() -> int:
        options.validate()
        watcher.state("running", phase=PHASE_LOADING, error=None)
        exit_code, result = EXIT_OK, {}
        if options.method is not None:
            captioner = make_captioner(options)
            watcher.phase(PHASE_CAPTIONING, method=options.method)
            report = caption_dataset(options, captioner, watcher.should_stop, watcher.progress)
            watcher.close()
            for path, reason in report.failed:
                watcher.warning(f"{path}: {reason}")
            print(f"kiln: {report.summary()}", file=sys.stderr, flush=True)
            result = {**report.counts(), "failures": report.failures(), "step": report.handled}
            if report.stopped:
                watcher.state("stopped", **result)
                return EXIT_OK
            exit_code = EXIT_FAILED if report.failed else EXIT_OK
        if options.report:
            print(format_tag_frequency(dataset_tag_frequency(options.dir, options.caption_extension)))
            phrases = dataset_phrase_frequency(options.dir, options.caption_extension)
            if phrases:
                print(format_phrase_frequency(phrases))
        watcher.state("done", **result)
        return exit_code

    with _graceful_signals(watcher.controls):
        return run_reported(work, watcher, (CaptionError, DatasetError),
                            interrupted="interrupted at once; captions written so far are kept")


@contextlib.contextmanager
def _graceful_signals(controls: ControlChannel) -> Iterator[None]:
    """Ctrl-C and SIGTERM ask for a stop after the current batch; the previous handlers come back afterwards
    (so an in-process caller, like a test, keeps its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    previous = {number: signal.getsignal(number) for number in signals}
    controls.install_signal_handlers()
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)

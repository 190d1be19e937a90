"""Command line: `python -m trainer run|check|tiny-model ...`. Heavy imports happen inside the verbs, so
`--help` and config errors answer fast."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from .caption.cli import add_caption_parser, cmd_caption
from .grid_cli import add_grid_parser, cmd_grid
from .lora_tools.cli import add_lora_parser, cmd_lora

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Kiln trainer")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="train a job in the foreground")
    run.add_argument("job", type=Path)
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    run.add_argument("--resume", action="store_true", help="continue from the newest saved training state")
    run.add_argument("--job-dir", type=Path, help="job folder for status.json/events.jsonl (used by the UI)")

    check = verbs.add_parser("check", help="validate a job and show what it would do")
    check.add_argument("job", type=Path)
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")

    tiny = verbs.add_parser("tiny-model", help="write a tiny random model (for demos and tests; it makes noise)")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--arch", choices=["sd15", "sd2", "sdxl"], default="sd15")
    tiny.add_argument("--format", choices=["diffusers", "single-file"], default="diffusers")

    add_caption_parser(verbs)
    add_lora_parser(verbs)
    add_grid_parser(verbs)

    args = parser.parse_args(argv)
    from .quiet import quiet_libraries

    quiet_libraries()
    verb = {"run": cmd_run, "check": cmd_check, "tiny-model": cmd_tiny_model, "caption": cmd_caption,
            "lora": cmd_lora, "grid": cmd_grid}[args.verb]
    return verb(args)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Problems with the user's input: reported in one line, no traceback."""
    from .config import ConfigError
    from .data import DatasetError
    from .loop import TrainingError
    from .models import ModelError

    return ConfigError, DatasetError, ModelError, TrainingError


def _fail(message: str) -> None:
    print(f"kiln: error: {message}", file=sys.stderr, flush=True)


def _load_job(args):
    """The job file with its --set overrides applied, or None after saying what is wrong."""
    from .config import ConfigError, load_job

    try:
        return load_job(args.job, args.overrides)
    except ConfigError as e:
        _fail(str(e))
        return None


def cmd_run(args) -> int:
    cfg = _load_job(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    from .jobs import ControlChannel, StatusWriter
    from .loop import default_paths, train
    from .progress import RunReporter

    is_main = os.environ.get("RANK", "0") == "0"
    status = StatusWriter(args.job_dir, enabled=is_main) if args.job_dir else None
    # Without a job folder, signals (Ctrl-C, SIGTERM) still give a graceful stop.
    controls = ControlChannel(args.job_dir, enabled=is_main)
    controls.install_signal_handlers()
    reporter = RunReporter(status=status, console=is_main)
    for note in cfg.migration_notes + cfg.warnings:
        reporter.warning(note)
    try:
        result = train(cfg, default_paths(cfg, args.job_dir), reporter, controls, resume=args.resume)
    except _user_errors() as e:
        reporter.close()
        if args.job_dir:  # the job's log.txt keeps the traceback for whoever debugs a failed job
            traceback.print_exc()
        reporter.state("failed", error=str(e))
        _fail(str(e))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        reporter.close()
        reporter.state("cancelled", error="interrupted before a state could be saved")
        _fail("interrupted")
        return EXIT_STOPPED
    except Exception as e:  # a bug or a library failure: full traceback to the log, one line to status
        reporter.close()
        traceback.print_exc()
        reporter.state("failed", error=f"{type(e).__name__}: {e}")
        _fail(f"{type(e).__name__}: {e} (traceback above)")
        return EXIT_FAILED
    outputs = [str(p) for p in result.outputs]
    if result.status == "stopped":
        reporter.state("cancelled", step=result.step, outputs=outputs)
        return EXIT_OK
    if is_main and cfg.sample.grid_at_end:
        from .grid_cli import grid_after_training

        grid_after_training(cfg, reporter)
    reporter.state("done", step=result.step, outputs=outputs)
    if is_main:  # only rank 0 writes files
        print(f"kiln: done: {result.outputs[-1]}", file=sys.stderr)
    return EXIT_OK


def cmd_check(args) -> int:
    cfg = _load_job(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    from .preflight import preflight_report

    try:
        print(preflight_report(cfg))
    except _user_errors() as e:
        _fail(str(e))
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_tiny_model(args) -> int:
    from .models import ModelError
    from .models.tiny import save_tiny_model

    try:
        path = save_tiny_model(args.out, arch=args.arch, fmt=args.format)
    except (ModelError, FileExistsError) as e:
        _fail(str(e))
        return EXIT_BAD_INPUT
    print(f"kiln: wrote a tiny random {args.arch} model to {path} (random weights: it generates noise)")
    return EXIT_OK

"""Command line: `python -m trainer run|check|tiny-model ...`. Heavy imports happen inside the verbs, so
`--help` and config errors answer fast."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from .caption.cli import add_caption_parser, cmd_caption

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
    check.add_argument("--json", action="store_true", help="print one JSON object (config, plan, warnings, "
                       "migration notes, errors) instead of the report")

    convert = verbs.add_parser("convert", help="turn a Kohya_ss config (GUI .json, sd-scripts .toml) into a Kiln job")
    convert.add_argument("source", type=Path)
    convert.add_argument("-o", "--output", type=Path, required=True, help="the job .toml to write")
    convert.add_argument("--force", action="store_true", help="replace the output file if it exists")

    tiny = verbs.add_parser("tiny-model", help="write a tiny random model (for demos and tests; it makes noise)")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--arch", choices=["sd15", "sd2", "sdxl"], default="sd15")
    tiny.add_argument("--format", choices=["diffusers", "single-file"], default="diffusers")

    add_caption_parser(verbs)

    args = parser.parse_args(argv)
    from .quiet import quiet_libraries

    quiet_libraries()
    verb = {"run": cmd_run, "check": cmd_check, "convert": cmd_convert, "tiny-model": cmd_tiny_model,
            "caption": cmd_caption}[args.verb]
    return verb(args)


_USER_ERRORS = (("trainer.config.errors", "ConfigError"), ("trainer.data.errors", "DatasetError"),
                ("trainer.models.errors", "ModelError"), ("trainer.loop", "TrainingError"))


def _user_errors() -> tuple[type[BaseException], ...]:
    """Problems with the user's input: reported in one line, no traceback. An error can only be raised once
    its module is loaded, so only loaded ones are looked up: naming them must not import torch and diffusers
    (tens of seconds) just to report a wrong path."""
    return tuple(getattr(sys.modules[module], name) for module, name in _USER_ERRORS if module in sys.modules)


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
    reporter.state("done", step=result.step, outputs=outputs)
    if is_main:  # only rank 0 writes files
        print(f"kiln: done: {result.outputs[-1]}", file=sys.stderr)
    return EXIT_OK


def cmd_check(args) -> int:
    if args.json:
        return _check_json(args)
    cfg = _load_job(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    try:
        _check_inputs_first(cfg)
        from .preflight import preflight_report

        print(preflight_report(cfg))
    except _user_errors() as e:
        _fail(str(e))
        return EXIT_BAD_INPUT
    return EXIT_OK


def _check_inputs_first(cfg) -> None:
    """The model/output gate before the preflight imports torch, so a wrong path answers in a second."""
    from .inputs import check_inputs
    from .paths import default_paths

    paths = default_paths(cfg)
    check_inputs(cfg, paths.output_dir, paths.state_dir)


def _check_json(args) -> int:
    """One JSON object on stdout whatever happens, so programs need not parse the text report."""
    import json

    from .config import ConfigError, load_job

    result = {"ok": False, "config": None, "plan": None, "warnings": [], "migration_notes": [], "errors": []}
    try:
        cfg = load_job(args.job, args.overrides)
        result |= {"config": cfg.to_dict(), "warnings": list(cfg.warnings),
                   "migration_notes": [_note_data(n) for n in cfg.migration_notes]}
        _check_inputs_first(cfg)
        from .preflight import preflight_data

        result |= preflight_data(cfg)
        result["ok"] = True
    except ConfigError as e:
        result["errors"] = list(e.problems)
    except _user_errors() as e:
        result["errors"] = str(e).splitlines()
    print(json.dumps(result, indent=2, default=str))
    return EXIT_OK if result["ok"] else EXIT_BAD_INPUT


def _note_data(note) -> dict:
    return note.as_dict() if hasattr(note, "as_dict") else {"note": str(note)}


def cmd_convert(args) -> int:
    """A Kohya config as a Kiln job file: the migrated keys, the notes as comments (what each Kohya key became
    or why it was ignored), and what is still to fill in. Written atomically; never replaces a file unasked."""
    from .atomic import write_text_atomic
    from .config import ConfigError, job_problems, load_job

    if args.output.exists() and not args.force:
        _fail(f"{args.output} already exists; choose another -o file, or add --force to replace it")
        return EXIT_BAD_INPUT
    try:
        cfg = load_job(args.source, complete=False)
    except ConfigError as e:
        _fail(str(e))
        return EXIT_BAD_INPUT
    comment = lambda text: "\n".join(f"# {line}" for line in str(text).splitlines())
    lines = [f"# Converted by `python -m trainer convert` from {args.source}", "#", "# Migration notes:"]
    lines += [comment(f"  {n}") for n in cfg.migration_notes] + [comment(f"  warning: {w}") for w in cfg.warnings]
    todo = job_problems(cfg, complete=True)
    if todo:
        lines += ["#", "# Still to do before this job runs:"] + [comment(f"  {p}") for p in todo]
    write_text_atomic(args.output, "\n".join(lines) + "\n" + cfg.to_toml())
    print(f"kiln: wrote {args.output} ({len(cfg.migration_notes)} migration notes"
          + (f"; {len(todo)} thing(s) still to fill in)" if todo else ")"), file=sys.stderr)
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

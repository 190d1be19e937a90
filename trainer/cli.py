"""Command line: `python -m trainer run|check|tiny-model ...`. Heavy imports happen inside the verbs, so
`--help` and config errors answer fast."""
from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from .caption.cli import add_caption_parser, cmd_caption
from .families import DEFAULT_FAMILY, FAMILY_IDS
from .grid_cli import add_grid_parser, cmd_grid
from .lora_tools.cli import add_lora_parser, cmd_lora
from .worker import EXIT_BAD_INPUT, EXIT_OK, say_error


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
    check.add_argument("--gpu", metavar="SIZE", help="plan for a GPU of this size (12GB): the predicted peak per "
                       "phase, whether it fits and the savers that would make it fit (training.gpu_memory_gib)")

    convert = verbs.add_parser("convert", help="turn a Kohya_ss config (GUI .json, sd-scripts .toml) into a Kiln job")
    convert.add_argument("source", type=Path)
    convert.add_argument("-o", "--output", type=Path, required=True, help="the job .toml to write")
    convert.add_argument("--force", action="store_true", help="replace the output file if it exists")

    queue = verbs.add_parser("queue", help="add a job to the queue of a jobs folder (the running app starts it)")
    queue.add_argument("job", type=Path)
    queue.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    queue.add_argument("--jobs-dir", type=Path, default=Path("jobs"), help="the app's --jobs-dir (default: jobs)")
    queue.add_argument("--name", help="the job's name (default: [output] name)")

    tiny = verbs.add_parser("tiny-model", help="write a tiny random model (for demos and tests; it makes noise)")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--arch", choices=list(FAMILY_IDS), default=DEFAULT_FAMILY.id)
    tiny.add_argument("--format", choices=["diffusers", "single-file", "split-files"], default="diffusers",
                      help="split-files (SD 3 / Flux / Chroma): a folder of transformer.safetensors, ae.safetensors, "
                           "clip_l/clip_g/t5xxl.safetensors, as people keep them")

    add_caption_parser(verbs)
    add_lora_parser(verbs)
    add_grid_parser(verbs)

    doctor = verbs.add_parser("doctor", help="find what in a dataset folder will hurt training (changes nothing)")
    doctor.add_argument("dataset", type=Path)
    doctor.add_argument("--resolution", type=int, default=512, help="training resolution (default 512)")
    doctor.add_argument("--trigger", default="", help="the word every caption should contain")
    doctor.add_argument("--json", action="store_true", help="print the report as one JSON object")
    doctor.add_argument("--move-duplicates", action="store_true",
                        help="move all but one image of each near-duplicate group to DATASET-duplicates/")

    evaluate = verbs.add_parser("evaluate", help="score every saved checkpoint of a job: FID, KID, IS, CLIP score")
    evaluate.add_argument("job", type=Path, help="a job .toml, or a job folder holding job.toml")
    evaluate.add_argument("--prompts", nargs="+", default=[], help="prompts (default: the job's sample prompts, "
                          "else its training captions)")
    evaluate.add_argument("--n", type=int, default=64, help="images per checkpoint (default 64)")
    evaluate.add_argument("--metrics", default="fid,kid,is,clip", help="comma-separated: fid,kid,is,clip")
    evaluate.add_argument("--seed", type=int, default=1234)
    evaluate.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    evaluate.add_argument("--clip-model", default="openai/clip-vit-large-patch14",
                          help="CLIP for the CLIP score (a hub id from the cache, or a local folder)")
    evaluate.add_argument("--best-by", default="", help="metric that picks the best checkpoint (default fid)")
    evaluate.add_argument("--job-dir", type=Path, help="an evaluation job's folder for status.json/events.jsonl "
                          "(used by the UI's queue)")

    args = parser.parse_args(argv)
    from .quiet import quiet_libraries

    quiet_libraries()
    verb = {"run": cmd_run, "check": cmd_check, "convert": cmd_convert, "queue": cmd_queue,
            "tiny-model": cmd_tiny_model, "caption": cmd_caption, "doctor": cmd_doctor, "evaluate": cmd_evaluate,
            "lora": cmd_lora, "grid": cmd_grid}[args.verb]
    return verb(args)


_USER_ERRORS = (("trainer.config.errors", "ConfigError"), ("trainer.data.errors", "DatasetError"),
                ("trainer.models.errors", "ModelError"), ("trainer.loop", "TrainingError"),
                ("trainer.atomic", "DiskFullError"), ("trainer.oom", "GpuMemoryError"))


def _user_errors() -> tuple[type[BaseException], ...]:
    """Problems with the user's input or machine (a full disk): reported in one line, no traceback. An error
    can only be raised once its module is loaded, so only loaded ones are looked up: naming them must not
    import torch and diffusers (tens of seconds) just to report a wrong path."""
    return tuple(getattr(sys.modules[module], name) for module, name in _USER_ERRORS if module in sys.modules)


def _load_job(args):
    """The job file with its --set overrides applied, or None after saying what is wrong."""
    from .config import ConfigError, load_job

    try:
        return load_job(args.job, args.overrides)
    except ConfigError as e:
        say_error(str(e))
        return None


def cmd_run(args) -> int:
    cfg = _load_job(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    from .loop import default_paths, train
    from .worker import is_main_process, job_channels, run_reported

    reporter, controls = job_channels(args.job_dir)
    controls.install_signal_handlers()
    for note in cfg.migration_notes + cfg.warnings:
        reporter.warning(note)

    def work() -> int:
        result = train(cfg, default_paths(cfg, args.job_dir), reporter, controls, resume=args.resume)
        outputs = [str(p) for p in result.outputs]
        # The job's summary names the best checkpoint by validation loss (and says when early stopping ended it).
        summary = {"best_validation": result.best_validation} if result.best_validation else {}
        if result.status == "stopped" and not result.early_stopped:
            reporter.state("stopped", step=result.step, outputs=outputs, **summary)
            return EXIT_OK
        if is_main_process() and cfg.sample.grid_at_end:
            from .grid_cli import grid_after_training

            grid_after_training(cfg, reporter, result.best_validation)
        reporter.state("done", step=result.step, outputs=outputs, early_stopped=result.early_stopped, **summary)
        if is_main_process():  # only rank 0 writes files
            print(f"kiln: done: {result.outputs[-1]}", file=sys.stderr)
        return EXIT_OK

    # the job's log.txt keeps the traceback of a user error too, for whoever debugs a failed job
    return run_reported(work, reporter, _user_errors(), interrupted="interrupted before a state could be saved",
                        log_user_tracebacks=bool(args.job_dir))


def cmd_check(args) -> int:
    if args.gpu is not None:
        from .planner import parse_gpu_size

        try:
            args.overrides = [*args.overrides, f"training.gpu_memory_gib={parse_gpu_size(args.gpu)}"]
        except ValueError as e:
            say_error(str(e))
            return EXIT_BAD_INPUT
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
        say_error(str(e))
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_queue(args) -> int:
    """Validate the job, copy it into a new job folder as `queued`, print its id. The file's relative paths are
    written resolved, so the copy means what the original meant."""
    cfg = _load_job(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    from .jobs import JobError, JobManager

    try:
        job_id = JobManager(args.jobs_dir).create(cfg.to_toml(), name=args.name or cfg.output.name,
                                                  parsed=cfg.to_dict())
    except (JobError, OSError) as e:
        say_error(str(e))
        return EXIT_BAD_INPUT
    print(job_id)
    print(f"kiln: queued {job_id} in {args.jobs_dir.resolve()}; a running `python app.py --jobs-dir "
          f"{args.jobs_dir}` starts it when the jobs before it have ended", file=sys.stderr)
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
        say_error(f"{args.output} already exists; choose another -o file, or add --force to replace it")
        return EXIT_BAD_INPUT
    try:
        cfg = load_job(args.source, complete=False)
    except ConfigError as e:
        say_error(str(e))
        return EXIT_BAD_INPUT
    comment = lambda text: "\n".join(f"# {_printable(line)}" for line in str(text).splitlines())
    lines = [f"# Converted by `python -m trainer convert` from {args.source}", "#", "# Migration notes:"]
    lines += [comment(f"  {n}") for n in cfg.migration_notes] + [comment(f"  warning: {w}") for w in cfg.warnings]
    todo = job_problems(cfg, complete=True)
    if todo:
        lines += ["#", "# Still to do before this job runs:"] + [comment(f"  {p}") for p in todo]
    text = "\n".join(lines) + "\n" + cfg.to_toml()
    try:  # what convert writes must load again: a stray character would make the job file unreadable
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        say_error(f"{args.source}: the converted job would not read back as TOML ({e}); nothing written")
        return EXIT_BAD_INPUT
    write_text_atomic(args.output, text)
    print(f"kiln: wrote {args.output} ({len(cfg.migration_notes)} migration notes"
          + (f"; {len(todo)} thing(s) still to fill in)" if todo else ")"), file=sys.stderr)
    return EXIT_OK


def _printable(text: str) -> str:
    """`text` with control characters (which TOML comments may not hold) written as \\xNN escapes."""
    return "".join(ch if ch == "\t" or ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def cmd_tiny_model(args) -> int:
    from .atomic import DiskFullError
    from .models import ModelError
    from .models.tiny import save_tiny_model

    try:
        path = save_tiny_model(args.out, arch=args.arch, fmt=args.format)
    except (ModelError, FileExistsError, DiskFullError) as e:
        say_error(str(e))
        return EXIT_BAD_INPUT
    print(f"kiln: wrote a tiny random {args.arch} model to {path} (random weights: it generates noise)")
    return EXIT_OK


def cmd_doctor(args) -> int:
    from .doctor import examine_dataset, move_duplicates_aside

    try:
        report = examine_dataset(args.dataset, resolution=args.resolution, trigger=args.trigger)
    except _user_errors() as e:
        say_error(str(e))
        return EXIT_BAD_INPUT
    print(report.to_json() if args.json else report.to_text())
    if args.move_duplicates:
        try:
            moved = move_duplicates_aside(report)
        except FileExistsError as e:
            say_error(str(e))
            return EXIT_BAD_INPUT
        print(f"kiln: moved {len(moved)} file(s) aside", file=sys.stderr)
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from .evaluation import METRICS, EvaluationError, EvaluationOptions, MetricsUnavailable, evaluate_job

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or args.n < 2:
        say_error(f"--metrics: unknown {', '.join(unknown)} (choose from {', '.join(METRICS)})" if unknown
                  else "--n must be at least 2 (FID needs a covariance)")
        return EXIT_BAD_INPUT
    options = EvaluationOptions(prompts=args.prompts, n=args.n, metrics=metrics, seed=args.seed, steps=args.steps,
                                clip_model=args.clip_model, best_by=args.best_by)
    if args.job_dir is not None:  # an evaluation job from the queue: progress and the end go to its status
        return _evaluate_as_job(args, options)
    try:
        result = evaluate_job(args.job, options, progress=lambda line: print(line, file=sys.stderr))
    except (*_user_errors(), EvaluationError, MetricsUnavailable) as e:
        say_error(str(e))
        return EXIT_BAD_INPUT
    print((result.out_dir / "metrics.md").read_text())
    print(f"kiln: wrote {result.out_dir / 'metrics.csv'}", file=sys.stderr)
    return EXIT_OK


EVALUATING = "evaluating"


def _evaluate_as_job(args, options) -> int:
    """`trainer evaluate` as a queued job: one step per checkpoint scored, the metrics table when done."""
    from .evaluation import EvaluationError, MetricsUnavailable, evaluate_job, find_checkpoints
    from .evaluation.run import find_job
    from .worker import job_channels, run_reported

    reporter, _ = job_channels(args.job_dir)

    def work() -> int:
        reporter.state("running", phase=EVALUATING, error=None)
        total = len(find_checkpoints(find_job(args.job)[0]))
        reporter.phase(EVALUATING, step=0, total_steps=total, message=f"{total} checkpoints (the base model first)")
        done = [0]

        def progress(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
            reporter.phase(EVALUATING, step=done[0], total_steps=total, message=line)
            done[0] += 1

        result = evaluate_job(args.job, options, progress=progress)
        print(f"kiln: wrote {result.out_dir / 'metrics.csv'}", file=sys.stderr)
        reporter.state("done", step=total, total_steps=total, outputs=[str(result.out_dir / "metrics.csv")])
        return EXIT_OK

    return run_reported(work, reporter, (*_user_errors(), EvaluationError, MetricsUnavailable),
                        interrupted="evaluation interrupted; the checkpoints are unchanged")

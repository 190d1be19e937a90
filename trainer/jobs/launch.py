"""The command line that runs a job's worker: plain `python -m trainer run` for one process, the accelerate
launcher for several. Read from the job's TOML with the standard library, so no torch is imported here."""
from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import JobFileError

MIXED_PRECISIONS = ("no", "fp16", "bf16")


def read_job_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise JobFileError(f"{source}: not valid TOML: {exc}") from None


def num_processes(job: dict, source: str) -> int:
    """`[training] num_processes` (1 when absent)."""
    value = training_table(job, source).get("num_processes", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobFileError(f"{source}: training.num_processes = {value!r} is not allowed; expected a whole "
                           "number of at least 1")
    return value


def training_table(job: dict, source: str) -> dict:
    table = job.get("training", {})
    if not isinstance(table, dict):
        raise JobFileError(f"{source}: training = {table!r} must be a table ([training])")
    return table


EVALUATE_TASK = "evaluate"  # top-level `task` of an evaluation job: [evaluate] job = the job folder to score


@dataclass(frozen=True)
class LaunchPlan:
    """What the command line needs from a job file, checked once: caption, evaluation or training, and how many
    processes. `evaluate_args`: the `trainer evaluate` arguments of an evaluation job."""
    caption: bool
    processes: int
    mixed_precision: str | None
    evaluate_args: tuple[str, ...] | None = None


def launch_plan(job: dict, source: str) -> LaunchPlan:
    """The plan from a parsed job (tomllib's dict, or JobConfig.to_dict()); JobFileError for what cannot run."""
    if job.get("task") == "caption":  # captioning jobs (trainer/caption/job.py) run in one process
        return LaunchPlan(caption=True, processes=1, mixed_precision=None)
    if job.get("task") == EVALUATE_TASK:
        return LaunchPlan(caption=False, processes=1, mixed_precision=None,
                          evaluate_args=evaluate_arguments(job, source))
    precision = training_table(job, source).get("mixed_precision", "fp16")
    return LaunchPlan(caption=False, processes=num_processes(job, source),
                      mixed_precision=precision if precision in MIXED_PRECISIONS else None)


def evaluation_job_toml(target_job_dir: Path, n: int, steps: int) -> str:
    """An evaluation job's file: score every checkpoint of the job in `target_job_dir` (`trainer evaluate`)."""
    import json  # a TOML basic string is a JSON string

    return (f'task = "{EVALUATE_TASK}"\n\n[{EVALUATE_TASK}]\njob = {json.dumps(str(target_job_dir))}\n'
            f"n = {int(n)}\nsteps = {int(steps)}\n")


def evaluate_arguments(job: dict, source: str) -> tuple[str, ...]:
    """`trainer evaluate` arguments from an evaluation job's [evaluate] table."""
    table = job.get(EVALUATE_TASK)
    if not isinstance(table, dict) or not isinstance(table.get("job"), str) or not table["job"]:
        raise JobFileError(f'{source}: an evaluation job needs [{EVALUATE_TASK}] job = "<job folder>"')
    args = [table["job"]]
    for key in ("n", "steps"):
        value = table.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise JobFileError(f"{source}: {EVALUATE_TASK}.{key} = {value!r} is not allowed; expected a whole "
                                   "number of at least 1")
            args += [f"--{key}", str(value)]
    return tuple(args)


def read_launch_plan(job_toml: Path) -> LaunchPlan:
    try:
        text = job_toml.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{job_toml}: cannot be read: {exc}") from None
    return launch_plan(read_job_toml(text, str(job_toml)), str(job_toml))


def worker_command(plan: LaunchPlan, job_toml: Path, job_dir: Path) -> list[str]:
    if plan.caption:
        return [sys.executable, "-m", "trainer", "caption", "--job", str(job_toml), "--job-dir", str(job_dir)]
    if plan.evaluate_args is not None:
        return [sys.executable, "-m", "trainer", "evaluate", *plan.evaluate_args, "--job-dir", str(job_dir)]
    trainer_args = ["trainer", "run", str(job_toml), "--job-dir", str(job_dir)]
    if plan.processes == 1:
        return [sys.executable, "-m", *trainer_args]
    # accelerate 1.15 launcher flags (accelerate/commands/launch.py): --multi_gpu starts torchrun with
    # --num_processes ranks; -m runs the script as a module; the explicit --num_machines, --mixed_precision
    # and --dynamo_backend stop it from warning about defaults. --main_process_port 0 takes a free port: on the
    # default 29500 a second distributed run on the machine fails to bind it, or sends accelerate to its
    # "standalone-like" fallback (once seen to leave a rank hanging at exit on torch 2.11).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(plan.processes), "--num_machines", "1", "--main_process_port", "0",
               "--dynamo_backend", "no"]
    if plan.mixed_precision:
        command += ["--mixed_precision", plan.mixed_precision]
    return [*command, "-m", *trainer_args]


def default_worker_command(job_toml: Path, job_dir: Path) -> list[str]:
    return worker_command(read_launch_plan(job_toml), job_toml, job_dir)


def worker_environment(command: list[str]) -> dict[str, str]:
    """The worker's environment: unbuffered output so log.txt is current, and, for several processes on a
    machine without an NVIDIA GPU, ACCELERATE_USE_CPU=1 — the launch that really gives N CPU ranks (gloo)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if "accelerate.commands.launch" in command and not nvidia_gpu_visible(env):
        env["ACCELERATE_USE_CPU"] = "1"
    return env


def nvidia_gpu_visible(env: dict[str, str]) -> bool:
    """Whether CUDA could see a GPU, judged without importing torch: the driver's device node exists and
    CUDA_VISIBLE_DEVICES does not hide every device."""
    if env.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists()

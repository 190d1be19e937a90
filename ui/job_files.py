"""From a validated form to the TOML a job runs, and the preflight check of it. The check runs
`python -m trainer check` in a subprocess so that the UI process never imports torch."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from trainer.atomic import write_text_atomic
from trainer.config import JobConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
JOB_OUTPUT_DIR = "output"  # relative in a job's TOML, so it resolves to the job folder's own output/
PREFLIGHT_TIMEOUT_S = 300
_NOISE_PREFIXES = ("Failed to load CPU gemm", "[transformers]")  # library chatter on stderr, not about the job


def job_toml(cfg: JobConfig) -> str:
    """The job's TOML. Every path is absolute (the form resolved them), except an output folder left empty,
    which becomes the job folder's output/."""
    if not cfg.output.dir:
        cfg.output.dir = JOB_OUTPUT_DIR
    return cfg.to_toml()


def run_preflight(toml_text: str, scratch_dir: Path, gpu_gib: float | None = None) -> tuple[bool, str]:
    """(ok, report) from `python -m trainer check`: resolved config, dataset summary, exact steps, memory
    estimate, warnings; or its one-line error naming the key. With `gpu_gib` (the card the UI found) the check
    also says whether the job fits it and which savers would make it fit (`--gpu`)."""
    fd, name = tempfile.mkstemp(dir=scratch_dir, prefix="preflight-", suffix=".toml")
    os.close(fd)
    path = Path(name)
    try:
        write_text_atomic(path, toml_text)
        try:
            gpu = ["--gpu", f"{gpu_gib:.2f}GB"] if gpu_gib else []
            done = subprocess.run([sys.executable, "-m", "trainer", "check", str(path), *gpu], cwd=PROJECT_ROOT,
                                  capture_output=True, text=True, timeout=PREFLIGHT_TIMEOUT_S,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired:
            return False, f"the check took longer than {PREFLIGHT_TIMEOUT_S} s and was stopped"
    finally:
        path.unlink(missing_ok=True)
    messages = [line for line in done.stderr.splitlines()
                if line.strip() and not line.startswith(_NOISE_PREFIXES)]
    report = done.stdout.rstrip()
    if messages:
        report += "\n\n# messages\n" + "\n".join(messages)
    return done.returncode == 0, report.replace(str(path), "(this job)")

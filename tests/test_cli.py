"""The command line as a user runs it: `python -m trainer check|run|tiny-model`, in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.helpers import make_dataset, write_job

REPO = Path(__file__).resolve().parents[1]


def trainer(*args, cwd=REPO, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


def test_check_reports_exactly_the_steps_that_run_does(tmp_path):
    data = tmp_path / "data"
    make_dataset(data / "3_kiln shape", n=3)  # Kohya folder: 3 repeats
    make_dataset(data / "plain", n=2, size=96)  # plain folder: dataset.repeats
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out", sections={
        "training": {"max_steps": 0, "epochs": 2, "batch_size": 2, "gradient_accumulation_steps": 2},
        "dataset": {"repeats": 2}})
    check = trainer("check", job)
    assert check.returncode == 0, check.stderr
    total = int(next(line for line in check.stdout.splitlines() if line.startswith("total steps:")).split()[2])
    assert "images: 5   with repeats: 13" in check.stdout
    assert "memory" in check.stdout and "sd15" in check.stdout

    run = trainer("run", job)
    assert run.returncode == 0, run.stderr
    with safe_open(tmp_path / "out" / "test-lora.safetensors", "pt") as f:
        assert int(f.metadata()["ss_steps"]) == total


@pytest.mark.parametrize("problem", ["bad-value", "unknown-key", "missing-model", "empty-dataset", "non-sd-model"])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, problem):
    data = make_dataset(tmp_path / "data")
    base, sections = "builtin:tiny-sd15", {}
    if problem == "bad-value":
        sections = {"training": {"learning_rate": -1.0}}
    elif problem == "unknown-key":
        sections = {"lora": {"rnak": 4}}
    elif problem == "missing-model":
        base = tmp_path / "nowhere" / "model.safetensors"
    elif problem == "empty-dataset":
        data = tmp_path / "empty"
        data.mkdir()
    elif problem == "non-sd-model":
        from safetensors.torch import save_file
        import torch

        base = tmp_path / "not-sd.safetensors"
        save_file({"encoder.weight": torch.zeros(3, 3)}, base)
    job = write_job(tmp_path / "job.toml", base, data, tmp_path / "out", sections=sections)
    before = sorted(p.name for p in data.iterdir())
    result = trainer("run", job)
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("kiln: error:")]
    assert error, result.stderr
    expected = {"bad-value": "training.learning_rate", "unknown-key": "did you mean", "missing-model": "nowhere",
                "empty-dataset": "empty", "non-sd-model": "not a Stable Diffusion model"}[problem]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "test-lora.safetensors").exists()
    assert sorted(p.name for p in data.iterdir()) == before


def test_tiny_single_file_trains_offline_and_refuses_overwrite(tmp_path):
    made = trainer("tiny-model", tmp_path / "tiny.safetensors", "--format", "single-file")
    assert made.returncode == 0, made.stderr
    again = trainer("tiny-model", tmp_path / "tiny.safetensors", "--format", "single-file")
    assert again.returncode == 2 and "exists" in again.stderr
    job = write_job(tmp_path / "job.toml", tmp_path / "tiny.safetensors", make_dataset(tmp_path / "data"),
                    tmp_path / "out", sections={"training": {"max_steps": 2}})
    run = trainer("run", job)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "test-lora.safetensors").is_file()


def test_demo_preset_runs_headless(tmp_path):
    run = trainer("run", REPO / "presets" / "demo-lora.toml", "--set", "training.max_steps=3",
                  "--set", f"output.dir={tmp_path}", "--set", "output.save_every_n_steps=0")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "kiln-demo-lora.safetensors"
    with safe_open(out, "pt") as f:
        assert f.metadata()["ss_sd_model_name"] == "builtin:tiny-sd15" or f.metadata()["ss_sd_model_name"]
    assert "demo" in run.stderr.lower() or "random" in run.stderr.lower()


def test_queue_adds_a_job_that_the_app_starts(tmp_path):
    import json

    from trainer.config import load_job

    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", Path("data"), Path("out"))  # relative paths
    jobs_dir = tmp_path / "jobs"
    queued = trainer("queue", job, "--jobs-dir", jobs_dir, "--set", "lora.rank=8", timeout=120)
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    status = json.loads((jobs_dir / job_id / "status.json").read_text())
    assert (status["state"], status["name"]) == ("queued", "test-lora")
    copy = load_job(jobs_dir / job_id / "job.toml")
    assert copy.dataset.dir == str(tmp_path / "data") and copy.output.dir == str(tmp_path / "out")  # as meant
    assert copy.lora.rank == 8

    bad = trainer("queue", job, "--jobs-dir", jobs_dir, "--set", "lora.rank=0", timeout=120)
    assert bad.returncode == 2 and "lora.rank" in bad.stderr
    assert [p.name for p in jobs_dir.iterdir() if not p.name.startswith(".")] == [job_id]

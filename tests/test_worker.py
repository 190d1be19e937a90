"""The real worker (`python -m trainer run --job-dir`) under the job manager, killed, resumed, and on 2 ranks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import toml
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import free_port, make_dataset, wait_for, write_job
from trainer import checkpoint
from trainer.jobs import JobError, JobManager, read_status

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))





def job_text(tmp_path, **sections) -> str:
    path = write_job(tmp_path / "template.toml", "builtin:tiny-sd15", make_dataset(tmp_path / "data"),
                     tmp_path / "out", sections=sections)
    return path.read_text()


def test_job_runs_stops_with_a_save_and_continues_to_the_end(tmp_path):
    manager = JobManager(tmp_path / "jobs", stop_grace_s=120)
    job_id = manager.create(job_text(tmp_path, training={"max_steps": 60}), "stop and go")
    manager.start_pending()
    try:
        wait_for(lambda: (manager.get(job_id).get("step") or 0) >= 3, what="progress")
        manager.stop(job_id)
        stopped = wait_for(lambda: manager.get(job_id) if manager.get(job_id)["state"] in ("stopped", "failed")
                           else None, what="stop")
        assert stopped["state"] == "stopped", stopped
        step = stopped["step"]
        assert 3 <= step < 60
        job_dir = manager.job_dir(job_id)
        assert checkpoint.latest_state(job_dir / "state").name == f"step{step:08d}"
        assert (tmp_path / "out" / f"test-lora-step{step:08d}.safetensors").is_file()
        kinds = [json.loads(line)["kind"] for line in (job_dir / "events.jsonl").read_text().splitlines()]
        assert "progress" in kinds and "save" in kinds

        manager.continue_job(job_id)
        # The stopped worker may still be exiting; until it has, the queue counts it and waits, so poll as the
        # app's queue thread does.
        wait_for(lambda: manager.start_pending() or manager.get(job_id)["state"] != "queued", what="restart")
        done = wait_for(lambda: manager.get(job_id) if manager.get(job_id)["state"] in ("done", "failed") else None,
                        what="finish")
        assert done["state"] == "done", done
        assert done["step"] == 60
        assert str(tmp_path / "out" / "test-lora.safetensors") in done["outputs"]
        assert f"resumed from {job_dir / 'state'}" in (job_dir / "log.txt").read_text()
        assert list((job_dir / "tensorboard").glob("events.out.tfevents.*"))
        before = (job_dir / "status.json").read_bytes()
        assert not manager.can_continue(job_id)[0]  # done: nothing left to continue, and it stays as it is
        with pytest.raises(JobError, match="is done"):
            manager.continue_job(job_id)
        assert (job_dir / "status.json").read_bytes() == before
    finally:
        for job in manager.list_jobs():
            if job["state"] in ("running", "paused", "stopping"):
                manager.stop(job["id"])


def test_a_late_failure_is_reported_with_its_message_and_traceback(tmp_path):
    manager = JobManager(tmp_path / "jobs")
    job_id = manager.create(job_text(tmp_path, training={"max_steps": 20, "learning_rate": 1e30,
                                                         "max_grad_norm": 0.0}), "diverges")
    manager.start_pending()
    status = wait_for(lambda: manager.get(job_id) if manager.get(job_id)["state"] in ("done", "failed") else None,
                      what="the job to end")
    assert status["state"] == "failed"
    assert "NaN" in status["error"] and "learning_rate" in status["error"]
    log = (manager.job_dir(job_id) / "log.txt").read_text()
    assert "Traceback" in log and "TrainingError" in log


def run_worker(job: Path, job_dir: Path | None = None, resume=False) -> subprocess.Popen:
    args = [sys.executable, "-m", "trainer", "run", str(job)]
    if job_dir:
        args += ["--job-dir", str(job_dir)]
    if resume:
        args.append("--resume")
    return subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_any_moment_then_resume_gives_bit_identical_weights(tmp_path):
    data = make_dataset(tmp_path / "data")
    sections = {"training": {"max_steps": 60, "lr_scheduler": "cosine", "optimizer": "adamw8bit"},
                "output": {"save_every_n_steps": 1, "keep_states": 2}, "lora": {"dropout": 0.1}}
    reference = write_job(tmp_path / "ref.toml", "builtin:tiny-sd15", data, tmp_path / "ref", sections=sections)
    assert run_worker(reference).wait(timeout=300) == 0

    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out", sections=sections)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    # Kill during start-up, then three times while it trains and saves every step (status.json is rewritten
    # about once a second, so the kills land at varying moments of a step or a save).
    for round_, resume in enumerate((False, True, True, True)):
        worker = run_worker(job, job_dir, resume=resume)
        try:
            if round_ == 1:
                time.sleep(2.0)  # still loading
            else:
                before = read_status(job_dir).get("step") or 0
                wait_for(lambda: read_status(job_dir).get("pid") == worker.pid
                         and (read_status(job_dir).get("step") or 0) >= before + 2, what="progress")
                time.sleep(0.07 * round_)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        # whatever was on disk at the moment of the kill is complete and readable
        for f in (tmp_path / "out").glob("*.safetensors"):
            with safe_open(f, "pt") as handle:
                assert handle.keys(), f
        for _, state in checkpoint.list_states(job_dir / "state"):
            assert checkpoint.load_state(state)["step"] > 0
        assert not (tmp_path / "out" / "test-lora.safetensors").exists(), "finished before the last kill"

    worker = run_worker(job, job_dir, resume=True)
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    a, b = load_file(tmp_path / "ref" / "test-lora.safetensors"), load_file(tmp_path / "out" / "test-lora.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# the fp8 base: the frozen UNet in float8, which DDP must not try to broadcast (only what learns is synced)
FP8_BASE = {"mixed_precision": "bf16", "cpu_mixed_precision": True, "base_quantization": "fp8",
            "gradient_checkpointing": True}


@pytest.mark.parametrize("extra", [{}, FP8_BASE], ids=["fp32", "fp8"])
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, extra):
    data = make_dataset(tmp_path / "data", n=4)
    common = {"max_steps": 6, "batch_size": 1, "optimizer": "adamw", **extra}
    one = write_job(tmp_path / "one.toml", "builtin:tiny-sd15", data, tmp_path / "one",
                    sections={"training": {**common, "gradient_accumulation_steps": 2}})
    two = write_job(tmp_path / "two.toml", "builtin:tiny-sd15", data, tmp_path / "two",
                    sections={"training": {**common, "num_processes": 2}})
    assert run_worker(one).wait(timeout=300) == 0
    # a free port of the test's own: another run on the machine may hold the default 29500, and port 0 (what the
    # worker asks for) can hand two tests starting together the same port (tests/helpers.py: free_port)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", extra.get("mixed_precision", "no"),
              "--dynamo_backend", "no",
              "-m", "trainer", "run", str(two)]
    ddp = subprocess.run(launch, cwd=REPO, env=dict(ENV, ACCELERATE_USE_CPU="1"), capture_output=True, text=True,
                         timeout=400)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stderr  # really two ranks (accelerate can silently start one)
    with safe_open(tmp_path / "two" / "test-lora.safetensors", "pt") as f:
        assert f.metadata()["ss_steps"] == "6"
    a, b = load_file(tmp_path / "one" / "test-lora.safetensors"), load_file(tmp_path / "two" / "test-lora.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-4, worst
    changed = max((a[k].float()).abs().max().item() for k in a if "lora_up" in k)
    assert changed > 1e-4  # the LoRA learned something, so equality means something


def test_ctrl_c_finishes_the_step_saves_and_exits_cleanly(tmp_path):
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", make_dataset(tmp_path / "data"), tmp_path / "out",
                    sections={"training": {"max_steps": 500}})
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    worker = run_worker(job, job_dir)
    try:
        wait_for(lambda: (read_status(job_dir).get("step") or 0) >= 2, what="progress")
        worker.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        _, err = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    status = read_status(job_dir)
    step = status["step"]
    assert status["state"] == "stopped" and 2 <= step < 500
    assert (tmp_path / "out" / f"test-lora-step{step:08d}.safetensors").is_file()
    assert checkpoint.latest_state(job_dir / "state").name == f"step{step:08d}"
    assert f"stopped — saved at step {step}/500; to continue: Continue in the Jobs" in err and "--resume" in err

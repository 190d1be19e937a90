"""What a killed save leaves in the output folder, and a kill between the final save and the exit (issue 25):
temporaries of this job's outputs are cleared at the start and after a finished run; `--resume` of a run whose
final file exists says it is done (the files stay as they are) instead of failing on "already exists"."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_dataset, write_job
from trainer.config import load_job
from trainer.loop import default_paths, train

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"training": {"max_steps": 4}, "output": {"save_every_n_steps": 2, "keep_states": 1}}


class PlantAt:
    """Controls that drop a partial temporary output (as a save killed in another process would) at a poll."""

    def __init__(self, folder, poll: int, name: str):
        self.folder, self.at, self.name, self.polls = folder, poll, name, 0

    def poll(self) -> list[str]:
        self.polls += 1
        if self.polls == self.at:
            (self.folder / self.name).write_bytes(b"half a safetensors file")
        return []


def test_partial_temporaries_of_this_jobs_outputs_do_not_stay(tmp_path, tiny_sd15_dir):
    out = tmp_path / "out"
    out.mkdir()
    own = [".test-lora-step00000002.safetensors.deadbeef.tmp", ".test-lora.safetensors.0123abcd.tmp",
           ".test-lora-step00000004-ema.safetensors.a1b2c3d4.tmp", ".test-lora.k2j_x9a1.tmp"]
    others = [".other-lora.safetensors.0123abcd.tmp", ".test-lora-v2.safetensors.0123abcd.tmp",
              "test-lora.safetensors.0123abcd.tmp", ".test-lora.safetensors.not-ours.tmp"]
    for name in own + others:
        (out / name).write_bytes(b"partial")
    (out / ".test-lora.x1y2z3w4.tmp").mkdir()  # a diffusers folder being written
    (out / ".test-lora.x1y2z3w4.tmp" / "model.safetensors").write_bytes(b"partial")
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, make_dataset(tmp_path / "data"), out, sections=SECTIONS)
    cfg = load_job(job)
    late = ".test-lora-step00000002.safetensors.feedf00d.tmp"  # appears after the start, as from a killed save
    result = train(cfg, default_paths(cfg), controls=PlantAt(out, 3, late))
    assert result.status == "done"
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))
    assert left == sorted(others), left  # other jobs' temporaries (and names Kiln never writes) are kept


def finished_then_killed(tmp_path, tiny_sd15_dir, **output):
    """A job run to the end; its disk is then what a kill between the final save and the exit leaves (final
    file and states written; the job never said "done")."""
    sections = {**SECTIONS, "output": {**SECTIONS["output"], **output}}
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, make_dataset(tmp_path / "data"), tmp_path / "out",
                    sections=sections)
    cfg = load_job(job)
    assert train(cfg, default_paths(cfg)).status == "done"
    return job, tmp_path / "out" / "test-lora.safetensors"


def test_resume_after_the_final_save_says_done_and_changes_nothing(tmp_path, tiny_sd15_dir):
    job, final = finished_then_killed(tmp_path, tiny_sd15_dir)
    (final.parent / ".test-lora.safetensors.0badf00d.tmp").write_bytes(b"partial")
    before = final.read_bytes(), final.stat().st_mtime_ns
    cfg = load_job(job)
    result = train(cfg, default_paths(cfg), resume=True)
    assert (result.status, result.step, result.total_steps, result.outputs) == ("done", 4, 4, [final])
    assert (final.read_bytes(), final.stat().st_mtime_ns) == before
    assert not list(final.parent.glob(".*.tmp"))
    # the worker's command line says so and exits 0, every time it is asked
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "trainer", "run", str(job), "--resume"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "this run finished" in run.stderr and "nothing to resume" in run.stderr
    # without --resume the finished file is still never overwritten
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="already exists"):
        train(cfg, default_paths(cfg))


def test_resume_with_overwrite_finishes_the_run_again_from_its_last_state(tmp_path, tiny_sd15_dir):
    """With output.overwrite the final file may be an older run's: the resume trains from the newest state to
    the end and replaces it (the same weights: the run is deterministic)."""
    import torch
    from safetensors.torch import load_file

    job, final = finished_then_killed(tmp_path, tiny_sd15_dir, overwrite=True)
    before = load_file(final)
    cfg = load_job(job)
    result = train(cfg, default_paths(cfg), resume=True)
    assert result.status == "done" and result.step == 4
    after = load_file(final)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

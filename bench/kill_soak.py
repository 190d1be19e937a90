"""Kill-9 soak: SIGKILL a training run at random moments (many of them while it is saving), resume it each time,
and check that no file is ever corrupt, every resume works, and the result matches an uninterrupted run.

The job is a tiny SD 1.x LoRA that saves weights and a training state every 2 steps and caches latents to disk,
so kills land in model loading, latent caching, training steps and saves. Half of the kills wait a random
time; the other half wait for a temporary file to appear (a save in progress) and kill within 0-20 ms.
After every kill each file Kiln left is opened: .safetensors with safetensors, state.pt with torch.load.
At the end every weights file (the step files and the final one) is compared bit for bit with those of an
uninterrupted run of the same job.

Run: .venv/bin/python bench/kill_soak.py [--kills 20] [--steps 60] [--seed 0]   (a few minutes on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tests.helpers import make_dataset, write_job  # noqa: E402
from trainer.models.tiny import save_tiny_model  # noqa: E402


def start_run(job: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "trainer", "run", str(job), "--resume"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def temporaries(out: Path) -> set[Path]:
    """The temporary files and folders of trainer.atomic under `out`."""
    return {p for p in out.rglob(".*") if p.name.endswith(".tmp")} if out.exists() else set()


def check_files(out: Path) -> tuple[list[str], int]:
    """(files that fail to open, temporary leftovers). Leftovers are not corrupt: they are never read, and the
    next save clears those of its folder."""
    corrupt, leftovers = [], 0
    for path in sorted(out.rglob("*")):
        if any(part.endswith(".tmp") for part in path.relative_to(out).parts):
            leftovers += path.is_file()
            continue
        try:
            if path.suffix == ".safetensors":
                load_file(path)
            elif path.name == "state.pt":
                torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # any failure to read is a corrupt file
            corrupt.append(f"{path.relative_to(out)}: {type(error).__name__}: {error}")
    return corrupt, leftovers


def weights_files(out: Path) -> dict[str, Path]:
    return {p.name: p for p in out.glob("*.safetensors")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = save_tiny_model(root / "tiny", arch="sd15")
        data = make_dataset(root / "data", n=4)
        sections = {"training": {"max_steps": args.steps, "cache_latents": True, "cache_latents_to_disk": True},
                    "output": {"save_every_n_steps": 2, "keep_states": 2, "overwrite": True}}
        reference_job = write_job(root / "reference.toml", model, data, root / "reference", sections=sections)
        soak_job = write_job(root / "soak.toml", model, data, root / "soak", sections=sections)

        started = time.time()
        reference = start_run(reference_job, root / "reference.log")
        if reference.wait() != 0:
            sys.exit(f"the uninterrupted run failed:\n{(root / 'reference.log').read_text()[-3000:]}")
        reference_s = time.time() - started

        out = root / "soak"
        kills, during_saves, failed_resumes, finished_early, corrupt, leftovers_seen = 0, 0, 0, 0, [], 0
        while kills < args.kills:
            left_by_earlier_kills = temporaries(out)
            run = start_run(soak_job, root / "soak.log")
            if rng.random() < 0.5:
                deadline = time.time() + rng.uniform(0.5, reference_s)
                while time.time() < deadline and run.poll() is None:
                    time.sleep(0.005)
                at_save = bool(temporaries(out) - left_by_earlier_kills)
            else:  # wait for a save to begin, then kill within 20 ms
                deadline = time.time() + reference_s * 2
                while time.time() < deadline and run.poll() is None and not temporaries(out) - left_by_earlier_kills:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0, 0.02))
                at_save = True
            if run.poll() is not None:  # it ended by itself before the kill
                if run.returncode != 0:
                    failed_resumes += 1
                else:
                    finished_early += 1
            else:
                os.kill(run.pid, signal.SIGKILL)
                run.wait()
                kills += 1
                during_saves += at_save
            bad, leftovers = check_files(out)
            corrupt += bad
            leftovers_seen = max(leftovers_seen, leftovers)
            if finished_early:  # the job completed: start it over so that the remaining kills land in a run too
                for path in weights_files(out).values():
                    path.unlink()
                finished_early = 0
                for state in (out / "test-lora-state").glob("step*"):
                    subprocess.run(["rm", "-rf", str(state)], check=True)

        final = start_run(soak_job, root / "soak.log")
        if final.wait() != 0:
            failed_resumes += 1
        bad, _ = check_files(out)
        corrupt += bad
        expected, got = weights_files(root / "reference"), weights_files(out)
        mismatches = []
        for name, path in sorted(expected.items()):
            if name not in got:
                continue  # a step file written before a restart-from-zero was deleted above
            a, b = load_file(path), load_file(got[name])
            if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
                mismatches.append(name)
        compared = sum(name in got for name in expected)
        print(json.dumps({
            "kills": kills, "kills_during_saves": during_saves, "corrupt_files": len(corrupt),
            "failed_resumes": failed_resumes, "weights_files_compared": compared, "mismatches": len(mismatches),
            "most_temporary_leftovers_at_once": leftovers_seen, "steps": args.steps,
            "uninterrupted_run_s": round(reference_s, 1), "soak_s": round(time.time() - started - reference_s, 1),
            "corrupt": corrupt, "mismatched": mismatches,
        }, indent=1))


if __name__ == "__main__":
    main()

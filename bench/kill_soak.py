"""Kill-9 soak: SIGKILL a training run at random moments (many of them while it is saving), resume it each time,
and check that no file is ever corrupt, every resume works, and the result matches an uninterrupted run.

The job is a tiny SD 1.x LoRA that saves weights and a training state every 2 steps and caches latents to disk,
so kills land in model loading, latent caching, training steps and saves. Two kills in five wait a random
time; two wait for a temporary file to appear (a save in progress) and kill within 0-20 ms; one waits for the
final file to appear and kills within 0-20 ms (between the final save and the exit).
After every kill each file Kiln left is opened: .safetensors with safetensors, state.pt with torch.load.
Whenever a run has saved its final file, `--resume` is run once more: it must exit 0 saying the run is done
and leave the final file as it is; no temporary file may be left in the output folder; every weights file (the
step files and the final one) is compared bit for bit with those of an uninterrupted run of the same job; then
the job starts over from step 0.

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


def wait_then_kill(run: subprocess.Popen, ready, limit_s: float, rng: random.Random) -> bool:
    """Wait until `ready()` (or `limit_s`, or the run's own end), then SIGKILL the run within 0-20 ms; whether it
    was killed (False: it had ended by itself)."""
    deadline = time.time() + limit_s
    while time.time() < deadline and run.poll() is None and not ready():
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.02))
    if run.poll() is not None:
        return False
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    return True


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


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
        # No output.overwrite: a resume after the final save must see the finished file and say "done".
        sections = {"training": {"max_steps": args.steps, "cache_latents": True, "cache_latents_to_disk": True},
                    "output": {"save_every_n_steps": 2, "keep_states": 2}}
        reference_job = write_job(root / "reference.toml", model, data, root / "reference", sections=sections)
        soak_job = write_job(root / "soak.toml", model, data, root / "soak", sections=sections)

        started = time.time()
        reference = start_run(reference_job, root / "reference.log")
        if reference.wait() != 0:
            sys.exit(f"the uninterrupted run failed:\n{(root / 'reference.log').read_text()[-3000:]}")
        reference_s = time.time() - started

        out = root / "soak"
        final = out / "test-lora.safetensors"
        kills, during_saves, after_final, failed_resumes, corrupt, leftovers_seen = 0, 0, 0, 0, [], 0
        finished_runs, done_resumes, left_after_finish, mismatches, compared = 0, 0, [], [], 0

        def finished() -> None:
            """The run saved its final file (and may have been killed right after): `--resume` must say done
            and change nothing, no temporary file may stay, and the weights must match the uninterrupted run.
            Then the job starts over, so that the remaining kills land in a run too."""
            nonlocal failed_resumes, done_resumes, finished_runs, compared
            finished_runs += 1
            before = final.read_bytes()
            again = start_run(soak_job, root / "soak.log")
            if again.wait() != 0 or final.read_bytes() != before:
                failed_resumes += 1
            else:
                done_resumes += 1
            left_after_finish.extend(str(p.relative_to(out)) for p in temporaries(out))
            for name, path in sorted(weights_files(out).items()):
                compared += 1
                if not same_weights(root / "reference" / name, path):
                    mismatches.append(name)
                path.unlink()
            for state in (out / "test-lora-state").glob("step*"):
                subprocess.run(["rm", "-rf", str(state)], check=True)

        while kills < args.kills:
            left_by_earlier_kills = temporaries(out)
            run = start_run(soak_job, root / "soak.log")
            mode = rng.choices(["random", "save", "final"], weights=[2, 2, 1])[0]
            if mode == "random":
                delay = rng.uniform(0.5, reference_s)
                killed = wait_then_kill(run, lambda: False, delay, rng)
                at_save = bool(temporaries(out) - left_by_earlier_kills)
            elif mode == "save":  # a save begins: kill within 20 ms
                killed = wait_then_kill(run, lambda: bool(temporaries(out) - left_by_earlier_kills),
                                        reference_s * 2, rng)
                at_save = True
            else:  # between the final save and the exit (the final samples are still being made)
                killed = wait_then_kill(run, final.exists, reference_s * 2, rng)
                at_save = False
            if killed:
                kills += 1
                during_saves += at_save
                after_final += mode == "final" and final.exists()
            elif run.returncode != 0:
                failed_resumes += 1
            bad, leftovers = check_files(out)
            corrupt += bad
            leftovers_seen = max(leftovers_seen, leftovers)
            if final.exists():
                finished()

        last = start_run(soak_job, root / "soak.log")
        if last.wait() != 0:
            failed_resumes += 1
        bad, _ = check_files(out)
        corrupt += bad
        finished()
        print(json.dumps({
            "kills": kills, "kills_during_saves": during_saves, "kills_after_final_save": after_final,
            "corrupt_files": len(corrupt), "failed_resumes": failed_resumes, "finished_runs": finished_runs,
            "resumes_after_finish_said_done": done_resumes, "weights_files_compared": compared,
            "mismatches": len(mismatches), "temporaries_left_after_finished_runs": len(left_after_finish),
            "most_temporary_leftovers_at_once": leftovers_seen, "steps": args.steps,
            "uninterrupted_run_s": round(reference_s, 1), "soak_s": round(time.time() - started - reference_s, 1),
            "corrupt": corrupt, "mismatched": mismatches, "left_after_finish": left_after_finish,
        }, indent=1))


if __name__ == "__main__":
    main()

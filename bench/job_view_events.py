"""A job view over a huge events.jsonl: the seconds the Jobs tab spends on the chosen job's events per look (loss
chart, LR chart, sample captions) with a generated file of about 100 MB, before and after reading it
incrementally with a cap (ui/job_events.py). "Before" is ui/job_view.py as it was at --before-rev (it re-read
the whole file for the sample captions on every look and kept every chart point).

Each look after the first comes after one more line is appended, as the worker does while the tab polls.

Run: .venv/bin/python bench/job_view_events.py [--mb 100] [--looks 5] [--before-rev af1c952]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_events(path: Path, megabytes: float) -> int:
    """A training run's events.jsonl of about `megabytes` MB: progress lines, a sample every 500 steps."""
    rng = random.Random(0)
    target, written, step = megabytes * 1024 * 1024, 0, 0
    with open(path, "w") as out:
        while written < target:
            step += 1
            lines = [json.dumps({"step": step, "epoch": step // 1000, "loss": rng.random(), "loss_avg": rng.random(),
                                 "lr": 1e-4, "it_per_s": 3.1, "eta_s": 1000.0, "kind": "progress",
                                 "time": 1.7e9 + step})]
            if step % 500 == 0:
                lines.append(json.dumps({"path": f"{path.parent}/samples/{step:08d}-0.png", "step": step,
                                         "prompt": "a photo of a cat --s 20", "kind": "sample", "time": 1.7e9}))
            text = "\n".join(lines) + "\n"
            out.write(text)
            written += len(text)
    return step


def old_job_view(rev: str):
    """ui/job_view.py as it was at `rev`, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:ui/job_view.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    scratch = Path(tempfile.mkdtemp()) / "old_job_view.py"
    scratch.write_text(source)
    spec = importlib.util.spec_from_file_location("old_job_view", scratch)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def looks(view, job_dir: Path, count: int) -> list[float]:
    """Seconds per look at the job (what the Jobs tab computes from events), one appended line between looks."""
    job = {"job_dir": str(job_dir)}
    times = []
    for i in range(count):
        started = time.perf_counter()
        view.loss_frame(job_dir)
        view.lr_frame(job_dir)
        view.sample_images(job)
        times.append(time.perf_counter() - started)
        with open(job_dir / "events.jsonl", "a") as out:
            out.write(json.dumps({"kind": "progress", "step": 10**7 + i, "loss": 0.5, "lr": 1e-4}) + "\n")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--looks", type=int, default=5)
    parser.add_argument("--before-rev", default="af1c952", help="a revision before ui/job_events.py")
    args = parser.parse_args()
    from ui import job_view as new_view

    with tempfile.TemporaryDirectory() as scratch:
        job_dir = Path(scratch)
        (job_dir / "samples").mkdir()
        steps = write_events(job_dir / "events.jsonl", args.mb)
        size_mb = (job_dir / "events.jsonl").stat().st_size / 1024 / 1024
        before = looks(old_job_view(args.before_rev), job_dir, args.looks)
        after = looks(new_view, job_dir, args.looks)
        from ui.job_events import _watched

        kept = len(_watched[str(job_dir)].progress_rows())
    later_before, later_after = statistics.median(before[1:]), statistics.median(after[1:])
    print(json.dumps({
        "events_mb": round(size_mb, 1), "progress_events": steps, "looks": args.looks,
        "before_first_look_s": round(before[0], 2), "before_later_look_s": round(later_before, 3),
        "after_first_look_s": round(after[0], 2), "after_later_look_s": round(later_after, 4),
        "later_look_speedup": round(later_before / later_after, 1), "points_kept_after": kept,
    }, indent=1))


if __name__ == "__main__":
    main()

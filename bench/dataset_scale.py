"""`trainer check` and `trainer doctor` on a large dataset: generates N small images (default 10,000) with
captions in a few Kohya folders, then times both in-process (targets on the 2-core dev machine: check under
5 s, doctor under 60 s for 10,000 images; docs/benchmarks.md). Run:
    .venv/bin/python bench/dataset_scale.py [--images 10000] [--keep DIR] [--profile check|doctor]"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    """n distinct small pictures (96..256 px, PNG and JPEG) with a caption each, in four `N_name` folders."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folders = [root / name for name in ("10_kiln cat", "5_kiln dog", "3_style", "1_misc")]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = rng.choice([(128, 128), (96, 160), (256, 192), (160, 96)])
        image = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):  # a few shapes so perceptual hashes differ
            x, y = rng.randrange(w), rng.randrange(h)
            draw.rectangle([x, y, x + rng.randrange(8, 64), y + rng.randrange(8, 64)],
                           fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        folder = folders[i % len(folders)]
        suffix = ".png" if i % 2 else ".jpg"
        image.save(folder / f"img_{i:05d}{suffix}", quality=90)
        (folder / f"img_{i:05d}.txt").write_text(f"kiln, picture {i % 97}, shape, colour {i % 13}")
    return root


def time_check(data: Path, out: Path) -> float:
    from trainer.config import parse_job
    from trainer.preflight import preflight_report

    cfg = parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"},
                     "dataset": {"dir": str(data), "resolution": 128},
                     "output": {"dir": str(out), "name": "bench"}, "training": {"max_steps": 100}})
    started = time.perf_counter()
    preflight_report(cfg)
    return time.perf_counter() - started


def time_doctor(data: Path) -> float:
    from trainer.doctor import examine_dataset

    started = time.perf_counter()
    examine_dataset(data, resolution=128)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder instead of a temporary one")
    parser.add_argument("--profile", choices=["check", "doctor"], help="print the 25 costliest functions of one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.keep or Path(tmp) / "data"
        if not data.is_dir():
            started = time.perf_counter()
            make_images(data, args.images)
            print(f"generated {args.images} images in {time.perf_counter() - started:.1f} s", flush=True)
        import trainer.preflight  # noqa: F401  (import time is not the scan's)
        runs = {"check": lambda: time_check(data, Path(tmp) / "out"), "doctor": lambda: time_doctor(data)}
        if args.profile:
            profiler = cProfile.Profile()
            seconds = profiler.runcall(runs[args.profile])
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            print(f"{args.profile}: {seconds:.1f} s (profiled)")
            return
        for name, run in runs.items():
            print(f"{name}: {run():.1f} s for {args.images} images", flush=True)


if __name__ == "__main__":
    main()

"""Class ("prior") image folders: which folder holds a job's class images, how many are there, and filling it
up to the required count, resumably.

Every image number has its own seed, so image 17 is the same picture whether it was made in the first run or
after an interruption, and in whatever batch it fell. Each image is written atomically as soon as it exists;
an interrupted generation keeps what it made. Kiln only ever adds files named kiln-class-NNNNN.png and never
touches a file already in the folder, so a user's own class folder is safe to point at.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from ..data.images import is_image_file
from ..atomic import write_atomically

GENERATED_PREFIX = "kiln-class-"
CACHE_INFO_FILE = ".kiln-class-images.json"  # hidden, so dataset scans ignore it
# Bump when generation changes in a way that changes the pictures, so old cache folders are not reused.
_GENERATION_VERSION = 1

# seeds -> one image per seed, in order
GenerateBatch = Callable[[Sequence[int]], list[Image.Image]]
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ClassImageSpec:
    """Everything that decides what a generated class image looks like: the cache key."""
    model: str  # the base model's identity (weights hash, else its path or id; plus a replacement VAE)
    prompt: str
    negative_prompt: str
    resolution: int
    steps: int
    guidance_scale: float
    sampler: str

    def key(self) -> str:
        text = json.dumps({"version": _GENERATION_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_root() -> Path:
    """The shared class-image cache: $KILN_CACHE_DIR/class-images, by default ~/.cache/kiln/class-images."""
    from ..paths import kiln_cache_dir

    return kiln_cache_dir() / "class-images"


def shared_cache_folder(spec: ClassImageSpec) -> Path:
    return cache_root() / spec.key()


def image_files(folder: Path) -> list[Path]:
    """The image files in a class folder (subfolders included, hidden names left out), sorted."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and is_image_file(path)
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def image_seed(number: int) -> int:
    """The seed of generated class image `number` (fixed, so a cache folder's content depends only on its key)."""
    return 1_000_003 * number + 17


def fill_class_folder(folder: Path, needed: int, generate: GenerateBatch, batch_size: int,
                      progress: ProgressFn | None = None, spec: ClassImageSpec | None = None) -> int:
    """Generate images into `folder` until it holds `needed` image files; return how many were made.

    Images already there count (whoever made them). New images take the lowest free kiln-class-NNNNN.png
    numbers; `generate` is called only when something is missing. With `spec`, the folder is a shared-cache
    folder and a small hidden file records what its images were made from.
    """
    present = len(image_files(folder))
    missing = max(needed - present, 0)
    if not missing:
        return 0
    if progress is not None:
        progress(present, needed)
    folder.mkdir(parents=True, exist_ok=True)
    if spec is not None and not (folder / CACHE_INFO_FILE).exists():
        info = json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n"
        write_atomically(folder / CACHE_INFO_FILE, lambda tmp: tmp.write_text(info))
    numbers = _free_numbers(folder, missing)
    made = 0
    for first in range(0, missing, batch_size):
        chunk = numbers[first:first + batch_size]
        images = generate([image_seed(number) for number in chunk])
        for number, image in zip(chunk, images, strict=True):
            write_atomically(_generated_path(folder, number), lambda tmp, im=image: im.save(tmp, format="PNG"))
            made += 1
        if progress is not None:
            progress(present + made, needed)
    return made


def _generated_path(folder: Path, number: int) -> Path:
    return folder / f"{GENERATED_PREFIX}{number:05d}.png"


def _free_numbers(folder: Path, count: int) -> list[int]:
    numbers: list[int] = []
    number = 0
    while len(numbers) < count:
        if not _generated_path(folder, number).exists():
            numbers.append(number)
        number += 1
    return numbers


class ThrottledProgress:
    """Turns (done, total) calls into reporter phase updates with an ETA, at most every `interval_s`
    (and always at the start and the end), so a long generation neither floods nor goes silent."""

    def __init__(self, reporter, phase: str, interval_s: float = 5.0, folder: Path | None = None,
                 what: str = "class images"):
        self.reporter, self.phase, self.interval_s, self.what = reporter, phase, interval_s, what
        self.folder = folder  # where the images go, so the UI can say so and show a few
        self._start: tuple[float, int] | None = None
        self._last_report = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = (now, done)
        elif done < total and now - self._last_report < self.interval_s:
            return
        started_at, started_done = self._start
        rate = (done - started_done) / (now - started_at) if done > started_done and now > started_at else None
        eta = (total - done) / rate if rate else None
        self._last_report = now
        message = f"{done}/{total} {self.what}" + (f", about {eta:.0f} s left" if eta is not None else "")
        where = {"class_dir": str(self.folder)} if self.folder is not None else {}
        self.reporter.phase(self.phase, done=done, total=total, eta_s=eta, images_per_s=rate, message=message,
                            **where)

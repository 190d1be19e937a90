"""Captioning a dataset folder: decide per image what its caption file should say, write the files that change,
and account for every image (captioned, skipped or failed). Images are only ever read."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.captions import CaptionTooLarge, read_caption_bytes
from ..data.images import load_image_rgb
from ..data.scan import scan_dataset
from ..atomic import write_text_atomic
from ..data.settings import dataset_settings
from .errors import CaptionError
from .methods import Captioner
from .options import CaptionOptions
from .text import combine, edit

ProgressCallback = Callable[[int, int], None]  # (images handled so far, images in all)
_MAX_LISTED = 20


@dataclass
class CaptionReport:
    """What a run did. `captioned`: caption files written; `skipped`: images whose caption file was left as it
    was (an existing caption kept, or nothing to write); `failed`: (image, why) for images not captioned."""
    root: Path
    total: int = 0
    captioned: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    stopped: bool = False  # a stop was asked for; images not reached are in none of the lists

    @property
    def handled(self) -> int:
        return len(self.captioned) + len(self.skipped) + len(self.failed)

    def counts(self) -> dict[str, int]:
        return {"captioned": len(self.captioned), "skipped": len(self.skipped), "failed": len(self.failed)}

    def failures(self) -> list[dict[str, str]]:
        return [{"path": str(path), "reason": reason} for path, reason in self.failed]

    def summary(self) -> str:
        head = (f"captioned {len(self.captioned)}, skipped {len(self.skipped)}, failed {len(self.failed)} "
                f"of {self.total} image(s) in {self.root}")
        if self.stopped:
            head += f" (stopped on request; {self.total - self.handled} not reached)"
        lines = [f"  {_relative(path, self.root)}: {reason}" for path, reason in self.failed[:_MAX_LISTED]]
        if len(self.failed) > _MAX_LISTED:
            lines.append(f"  ... and {len(self.failed) - _MAX_LISTED} more")
        return "\n".join([head, *(["failed:"] + lines if lines else [])])


@dataclass
class _Item:
    image: Path
    sidecar: Path
    existing: str | None  # the caption file's text, None when there is none (or it holds only whitespace)


def caption_dataset(options: CaptionOptions, captioner: Captioner | None,
                    should_stop: Callable[[], bool] = lambda: False,
                    on_progress: ProgressCallback | None = None) -> CaptionReport:
    """Caption every image under options.dir (see module doc and docs/captioning.md). `should_stop` is asked
    before each batch; when it says yes the run ends there and what is written stays written. Raises
    DatasetError when the folder is missing or holds no readable image."""
    index = scan_dataset(dataset_settings(options.dir, caption_extension=options.caption_extension,
                                          enable_bucket=False))
    scanned_items, skipped = index.items, index.skipped
    if options.only:
        scanned_items = [item for item in index.items if item.path.relative_to(index.root).as_posix() == options.only]
        skipped = []
        if not scanned_items:
            raise CaptionError(f"--only {options.only!r} is not an image of {index.root} (a path relative to it)")
    report = CaptionReport(root=index.root, total=len(scanned_items) + len(skipped))
    # Files the scan could not use (broken, truncated, too small) are named now; they get no caption.
    report.failed.extend(skipped)
    items = []
    for scanned in scanned_items:
        # The caption file training reads (a.TXT counts), else the new one's name.
        image, sidecar = scanned.path, scanned.caption_file or scanned.path.with_name(scanned.path.stem
                                                                                      + options.caption_extension)
        try:
            items.append(_Item(image, sidecar, _read_existing(sidecar)))
        except (OSError, UnicodeDecodeError, CaptionTooLarge) as error:
            report.failed.append((image, f"its caption file {sidecar.name} cannot be read ({error}); left alone"))
    _notify(on_progress, report)

    batch_size = captioner.batch_size if captioner is not None else 1
    backup = CaptionBackup(index.root)
    for start in range(0, len(items), batch_size):
        if should_stop():
            report.stopped = True
            break
        batch = items[start:start + batch_size]
        for item, generated in zip(batch, _generate(batch, options, captioner, report)):
            if generated is _FAILED:
                pass
            elif _kept(item, options) and captioner is not None and not options.edit_kept:
                report.skipped.append(item.image)  # skip-existing means the caption stays exactly as it is
            else:
                _finish(item, generated, options, report, backup)
            _notify(on_progress, report)
    return report


_FAILED = object()  # marks an image whose caption could not be generated (already recorded as failed)


def _generate(batch: Sequence[_Item], options: CaptionOptions, captioner: Captioner | None,
              report: CaptionReport) -> list:
    """The generated caption per item: a string, None when none is wanted (an existing caption is kept, or the
    run only edits), or _FAILED after recording why."""
    wanted = [item for item in batch
              if captioner is not None and not (item.existing and options.mode == "skip-existing")]
    results: dict[Path, object] = {}
    images = []
    if captioner is not None and captioner.needs_images:
        loadable = []
        for item in wanted:
            try:
                images.append(load_image_rgb(item.image))
                loadable.append(item)
            except Exception as error:  # Pillow raises many types for bad data; the image is reported
                report.failed.append((item.image, f"cannot be read as an image: {error}"))
                results[item.image] = _FAILED
        wanted = loadable
    if wanted:
        for item, caption in zip(wanted, captioner.caption_batch([item.image for item in wanted], images)):
            results[item.image] = caption.strip()
    return [results.get(item.image) for item in batch]


def _kept(item: _Item, options: CaptionOptions) -> bool:
    return bool(item.existing) and options.mode == "skip-existing"


class CaptionBackup:
    """Copies of the caption files an overwrite (or --edit-kept) replaces, under <dataset>/.kiln-caption-backup/<run time>/ (a hidden
    folder: the dataset scan skips it), made before the first change, so an overwrite can be undone by hand."""

    FOLDER = ".kiln-caption-backup"

    def __init__(self, root: Path):
        self.root = root
        self.folder = root / self.FOLDER / time.strftime("%Y%m%d-%H%M%S")

    def keep(self, sidecar: Path) -> None:
        write_text_atomic(self.folder / sidecar.relative_to(self.root), sidecar.read_text(encoding="utf-8-sig"))


def _finish(item: _Item, generated: str | None, options: CaptionOptions, report: CaptionReport,
            backup: CaptionBackup) -> None:
    """Combine, edit, and write the caption file when its text changes (after backing up the one replaced)."""
    caption = combine(item.existing, generated, options.mode)
    caption = edit(caption, options) if caption is not None else None
    if not caption or caption == item.existing:
        report.skipped.append(item.image)
        return
    try:
        if item.existing is not None and (options.mode == "overwrite" or options.edit_kept):
            backup.keep(item.sidecar)  # the person's own words are replaced: keep a copy
        write_text_atomic(item.sidecar, caption + "\n")
    except OSError as error:
        report.failed.append((item.image, f"could not write {item.sidecar.name}: {error}"))
        return
    report.captioned.append(item.image)


def _read_existing(sidecar: Path) -> str | None:
    try:
        text = read_caption_bytes(sidecar).decode("utf-8-sig").strip()
    except FileNotFoundError:
        return None
    return text or None


def _notify(on_progress: ProgressCallback | None, report: CaptionReport) -> None:
    if on_progress is not None:
        on_progress(report.handled, report.total)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)

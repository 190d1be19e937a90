"""Datasets made in the UI: uploads copied into a Kohya-layout folder in the workspace, a summary of a dataset
(counts, sizes, captions, tags) and caption editing. What a dataset holds comes from training's own scanner
(trainer.data.scan, which loads no torch), so the Dataset tab shows the repeats and captions training uses."""
from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from trainer.atomic import write_atomically, write_text_atomic
from trainer.config.schema import find_field
from trainer.data.captions import split_tags
from trainer.data.errors import DatasetError
from trainer.data.images import IMAGE_EXTENSIONS
from trainer.data.scan import caption_file_for, scan_dataset
from trainer.data.settings import dataset_settings

# The schema's default caption extension: a workspace dataset is not tied to one job's settings.
CAPTION_EXTENSION = find_field("dataset.caption_extension").default
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._ +-]+")


class DatasetInputError(ValueError):
    """A dataset name, token or upload the user has to change; the message says which and why."""


@dataclass
class ImportResult:
    folder: Path
    added: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "name: reason"


def safe_file_name(uploaded_name: str) -> str:
    """The last part of an uploaded name with anything that could leave the folder or trouble a shell
    removed: "../../x.png" -> "x.png", "/etc/passwd" -> "passwd", "C:\\a\\b.png" -> "b.png"."""
    base = uploaded_name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_CHARS.sub("_", base).strip(" .")
    return base[:120]


def safe_folder_name(text: str, what: str) -> str:
    """A folder name typed by the user, checked rather than silently changed so they see what they get."""
    cleaned = text.strip()
    if not cleaned or _UNSAFE_CHARS.search(cleaned) or cleaned.startswith(".") or len(cleaned) > 80:
        raise DatasetInputError(f"{what} {text!r} is not usable: use letters, digits, spaces, '.', '_', '+', '-' "
                                "(at most 80, not starting with a dot)")
    return cleaned


def subset_folder_name(repeats: int, token: str, class_word: str) -> str:
    """Kohya's "<repeats>_<token> <class>" folder: the folder name is the caption of uncaptioned images."""
    if not isinstance(repeats, int) or not 1 <= repeats <= 1000:
        raise DatasetInputError(f"repeats = {repeats!r} must be a whole number between 1 and 1000")
    caption = " ".join(part.strip() for part in (token, class_word) if part.strip())
    if not caption:
        raise DatasetInputError("give an instance token (e.g. 'sks') or a class (e.g. 'dog'): the folder name "
                                "becomes the caption of images without a caption file")
    return f"{repeats}_{safe_folder_name(caption, 'instance token + class')}"


def import_uploads(datasets_dir: Path, name: str, token: str, class_word: str, repeats: int,
                   uploads: list[str]) -> ImportResult:
    """Copy uploaded images (and .txt captions named like them) into
    <datasets_dir>/<name>/<repeats>_<token> <class>/. Existing files are never replaced: a clashing name gets
    a -2, -3... suffix. Files that are not readable images are refused with the reason."""
    dataset = datasets_dir / safe_folder_name(name, "dataset name")
    folder = dataset / subset_folder_name(repeats, token, class_word)
    if not uploads:
        raise DatasetInputError("no files were uploaded")
    folder.mkdir(parents=True, exist_ok=True)
    result = ImportResult(folder)
    images = [u for u in uploads if not u.lower().endswith(CAPTION_EXTENSION)]
    captions = {Path(safe_file_name(u)).stem: u for u in uploads if u.lower().endswith(CAPTION_EXTENSION)}
    for upload in images:
        shown = Path(upload).name
        target_name = safe_file_name(upload)
        problem = _image_problem(Path(upload), target_name)
        if problem:
            result.refused.append(f"{shown}: {problem}")
            continue
        target = _free_path(folder, target_name)
        _copy_atomic(Path(upload), target)
        result.added.append(target.name)
        caption = captions.pop(Path(target_name).stem, None)
        if caption is not None:
            _copy_atomic(Path(caption), target.with_suffix(CAPTION_EXTENSION))
    result.refused += [f"{Path(c).name}: a caption file with no image of the same name" for c in captions.values()]
    return result


def _image_problem(path: Path, name: str) -> str | None:
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        return f"not an image file (accepted: {', '.join(IMAGE_EXTENSIONS)}, plus .txt captions)"
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"cannot be read as an image ({str(exc).replace(str(path), name)})"
    return None


def _free_path(folder: Path, name: str) -> Path:
    stem, suffix = os.path.splitext(name)
    candidate, n = folder / name, 1
    while candidate.exists() or candidate.with_suffix(CAPTION_EXTENSION).exists():
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    if candidate.resolve().parent != folder.resolve():  # belt and braces: safe_file_name already stripped paths
        raise DatasetInputError(f"{name!r} would be written outside {folder}")
    return candidate


def _copy_atomic(source: Path, target: Path) -> None:
    write_atomically(target, lambda tmp: shutil.copyfile(source, tmp))


def list_datasets(datasets_dir: Path) -> list[Path]:
    if not datasets_dir.is_dir():
        return []
    return sorted(p for p in datasets_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass
class DatasetImage:
    path: Path
    relative: str          # to the dataset folder, as shown and as the caption editor names it
    width: int
    height: int
    caption: str           # the caption file's text as it is on disk (what the editor shows), "" without one
    folder_caption: str    # what the image gets without a caption: the Kohya folder name, else ""
    repeats: int
    training_caption: str  # the caption training uses (the file's first line, else folder_caption)


@dataclass
class DatasetView:
    images: list[DatasetImage]
    findings: list[str]  # what the scan reports: skipped files and why, orphan captions, unreadable folders...


def view_dataset(dataset: Path) -> DatasetView:
    """Every usable image under the dataset folder, as training sees it (trainer.data.scan_dataset with the
    schema's [dataset] defaults), sorted by path, and the scan's findings (files training skips are listed
    there, not shown as images)."""
    try:
        index = scan_dataset(dataset_settings(dataset, enable_bucket=False))
    except DatasetError as error:  # an empty or missing folder: the summary says "No images yet."
        return DatasetView([], [str(error)] if dataset.is_dir() and any(dataset.iterdir()) else [])
    images = [DatasetImage(item.path, item.path.relative_to(index.root).as_posix(), item.width, item.height,
                           _file_text(item.caption_file), item.fallback_caption, item.repeats, item.caption)
              for item in index.items]
    return DatasetView(images, index.warnings)


def _file_text(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8-sig", errors="replace").strip()
    except OSError:
        return ""


def summarize(view: DatasetView) -> str:
    """Markdown: counts per subset with repeats, captions present, the spread of image sizes, and what the
    scan found wrong."""
    images = view.images
    found = "".join(f"\n\n```\n{finding}\n```" for finding in view.findings)
    if not images:
        return "No images yet." + found
    subsets: dict[str, list[DatasetImage]] = {}
    for image in images:
        subsets.setdefault(str(Path(image.relative).parent), []).append(image)
    lines = [f"**{len(images)} images**, {sum(i.repeats for i in images)} with repeats; "
             f"{sum(1 for i in images if i.caption)} have a caption file."]
    lines += [f"- `{name}`: {len(items)} images x {items[0].repeats} repeats" for name, items in subsets.items()]
    sizes = Counter(f"{i.width}x{i.height}" for i in images)
    widths, heights = [i.width for i in images], [i.height for i in images]
    lines.append(f"\nSizes: width {min(widths)}-{max(widths)}, height {min(heights)}-{max(heights)}; most common: "
                 + ", ".join(f"{size} ({count})" for size, count in sizes.most_common(5)))
    return "\n".join(lines) + found


def tag_frequency(images: list[DatasetImage]) -> list[tuple[str, int]]:
    """Comma-separated tags over every image's training caption, most common first."""
    counts: Counter[str] = Counter()
    for image in images:
        counts.update(set(split_tags(image.training_caption)))
    return counts.most_common()


def save_captions(dataset: Path, edits: list[tuple[str, str]]) -> list[str]:
    """Write changed captions (atomically) for (relative image path, caption) pairs; returns the images
    whose caption changed. A path that is not an image inside the dataset is refused."""
    root = dataset.resolve()
    changed = []
    for relative, caption in edits:
        image = (root / relative).resolve()
        if not image.is_relative_to(root) or image.suffix.lower() not in IMAGE_EXTENSIONS or not image.is_file():
            raise DatasetInputError(f"{relative!r} is not an image of dataset {dataset.name}")
        caption_file = caption_file_for(image, CAPTION_EXTENSION)
        old = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        new = (caption or "").strip()
        if new != old:
            write_text_atomic(caption_file, new + "\n")
            changed.append(relative)
    return changed

"""Datasets made in the UI: uploads copied into a Kohya-layout folder in the workspace, a summary of a dataset
(counts, sizes, captions, tags) and caption editing. What a dataset holds comes from training's own scanner
(trainer.data.scan, which loads no torch), so the Dataset tab shows the repeats and captions training uses."""
from __future__ import annotations

import os
import re
import shutil
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from trainer.atomic import write_atomically, write_text_atomic
from trainer.config.schema import find_field
from trainer.data.captions import split_tags
from trainer.data.errors import DatasetError
from trainer.data.images import IMAGE_EXTENSIONS
from trainer.data.scan import KOHYA_FOLDER, caption_file_for, scan_dataset
from trainer.data.settings import dataset_settings
from trainer.hashing import file_sha256
from trainer.names import BadName, check_name, path_inside

# The schema's default caption extension: a workspace dataset is not tied to one job's settings.
CAPTION_EXTENSION = find_field("dataset.caption_extension").default
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._ +-]+")
# What a file name cannot hold on Linux, macOS or Windows: separators, NUL and control characters, and Windows'
# reserved <>:"|?*. Everything else (accents, emoji, brackets) is kept as the person named it.
_UNHOLDABLE_CHARS = re.compile(r'[/\\\x00-\x1f\x7f<>:"|?*]+')
MAX_NAME_CHARS = 120
MAX_NAME_BYTES = 240  # most file systems allow 255 bytes per name; room for a "-2" suffix
MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit (2 x its warning threshold)


class DatasetInputError(ValueError):
    """A dataset name, token or upload the user has to change; the message says which and why."""


@dataclass
class ImportResult:
    folder: Path
    added: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "name: reason"
    duplicates: list[str] = field(default_factory=list)  # the same content is already in the dataset
    renamed: list[str] = field(default_factory=list)  # "uploaded -> kept" where the name had to change


def safe_file_name(uploaded_name: str) -> str:
    """The last part of an uploaded name, keeping every letter a file system can hold ("mon chat été 🐱.png"
    stays), with what no file system holds replaced by "_" and nothing that could leave the folder:
    "../../x.png" -> "x.png", "C:\\a\\b.png" -> "b.png". Names over MAX_NAME_CHARS are shortened, keeping the
    extension."""
    base = unicodedata.normalize("NFC", uploaded_name.replace("\\", "/").rsplit("/", 1)[-1])
    base = _UNHOLDABLE_CHARS.sub("_", base).strip(" .")
    stem, suffix = os.path.splitext(base)
    if len(suffix) > 16:  # not an extension, just a dot in a long name
        stem, suffix = base, ""
    while stem and (len(stem) + len(suffix) > MAX_NAME_CHARS or len((stem + suffix).encode()) > MAX_NAME_BYTES):
        stem = stem[:-1]
    return (stem.rstrip(" .") or "upload") + suffix


def safe_folder_name(text: str, what: str) -> str:
    """A folder name typed by the user, checked (trainer.names) rather than silently changed so they see what
    they get; Unicode letters are kept."""
    try:
        return check_name((text or "").strip(), what)
    except BadName as exc:
        raise DatasetInputError(str(exc)) from None


def dataset_folder(datasets_dir: Path, name: str) -> Path:
    """<datasets_dir>/<name>, refused when the name is not a name or a symlink there leads elsewhere."""
    try:
        return path_inside(datasets_dir, safe_folder_name(name, "dataset name"), "dataset name")
    except BadName as exc:
        raise DatasetInputError(str(exc)) from None


def subset_folder_name(repeats: int, token: str, class_word: str) -> str:
    """Kohya's "<repeats>_<token> <class>" folder: the folder name is the caption of uncaptioned images."""
    if not isinstance(repeats, int) or not 1 <= repeats <= 1000:
        raise DatasetInputError(f"repeats = {repeats!r} must be a whole number between 1 and 1000")
    caption = " ".join(part.strip() for part in (token, class_word) if part.strip())
    if not caption:
        raise DatasetInputError("give an instance token (e.g. 'sks') or a class (e.g. 'dog'): the folder name "
                                "becomes the caption of images without a caption file")
    return f"{repeats}_{safe_folder_name(caption, 'instance token + class')}"


@dataclass
class KohyaFolder:
    """What an uploaded folder's Kohya name ("20_sks toy") says: repeats, instance token, class."""
    name: str
    repeats: int
    token: str
    class_word: str


def kohya_folder(relative_paths: list[str]) -> tuple[KohyaFolder | None, list[str]]:
    """The Kohya folder an uploaded folder's files sit in (the first one named "N_words"), and the names of the
    other Kohya folders found, which would need their own upload to keep their own repeats."""
    found = []
    for relative in relative_paths:
        for part in str(relative).replace("\\", "/").split("/")[:-1]:
            match = KOHYA_FOLDER.match(part)
            if match and part not in found and 1 <= int(match.group(1)) <= 1000:
                found.append(part)
    if not found:
        return None, []
    match = KOHYA_FOLDER.match(found[0])
    words = match.group(2).split()
    return KohyaFolder(found[0], int(match.group(1)), words[0] if words else "", " ".join(words[1:])), found[1:]


def import_uploads(datasets_dir: Path, name: str, token: str, class_word: str, repeats: int,
                   uploads: list[str]) -> ImportResult:
    """Copy uploaded images (and .txt captions named like them) into
    <datasets_dir>/<name>/<repeats>_<token> <class>/. Existing files are never replaced: a clashing name gets
    a -2, -3... suffix. Files that are not readable images are refused with the reason."""
    dataset = dataset_folder(datasets_dir, name)
    try:
        folder = path_inside(dataset, subset_folder_name(repeats, token, class_word), "subset folder")
    except BadName as exc:
        raise DatasetInputError(str(exc)) from None
    if not uploads:
        raise DatasetInputError("no files were uploaded")
    folder.mkdir(parents=True, exist_ok=True)
    result = ImportResult(folder)
    images = [u for u in uploads if not u.lower().endswith(CAPTION_EXTENSION)]
    captions = {Path(safe_file_name(u)).stem: u for u in uploads if u.lower().endswith(CAPTION_EXTENSION)}
    present = _contents_by_hash(dataset)
    for upload in images:
        shown = Path(upload).name
        target_name = safe_file_name(upload)
        problem = _image_problem(Path(upload), target_name)
        if problem:
            result.refused.append(f"{shown}: {problem}")
            continue
        digest = file_sha256(Path(upload))
        if digest in present:
            result.duplicates.append(f"{shown} (already there as {present[digest]})")
            captions.pop(Path(target_name).stem, None)
            continue
        if target_name != shown:
            result.renamed.append(f"{shown} -> {target_name}")
        target = _free_path(folder, target_name)
        present[digest] = target.relative_to(dataset).as_posix()
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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > MAX_IMAGE_PIXELS:
                    return _too_many_pixels(width, height)
                image.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return f"claims more pixels than Kiln opens, a decompression bomb? ({exc})"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"cannot be read as an image ({str(exc).replace(str(path), name)})"
    return None


def _too_many_pixels(width: int, height: int) -> str:
    return (f"claims {width}x{height} pixels ({width * height / 1e6:,.0f} megapixels), more than the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels Kiln opens; it would need gigabytes of memory (a "
            "decompression bomb?)")


def _contents_by_hash(dataset: Path) -> dict[str, str]:
    """sha256 -> relative path of every image already in the dataset, so a second upload adds nothing."""
    if not dataset.is_dir():
        return {}
    return {file_sha256(p): p.relative_to(dataset).as_posix() for p in sorted(dataset.rglob("*"))
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")}


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


def save_captions(dataset: Path, edits: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Write changed captions (atomically) for (relative image path, caption) pairs; returns (the images whose
    caption changed, problems). A path that is not an image inside the dataset is refused. A caption file that
    is not UTF-8 (Latin-1 from an old tool) is never rewritten behind the person's back: left alone when the
    row was not edited, refused with the reason when it was; the other captions are still saved."""
    root = dataset.resolve()
    changed, problems = [], []
    for relative, caption in edits:
        image = (root / relative).resolve()
        if not image.is_relative_to(root) or image.suffix.lower() not in IMAGE_EXTENSIONS or not image.is_file():
            raise DatasetInputError(f"{relative!r} is not an image of dataset {dataset.name}")
        caption_file = caption_file_for(image, CAPTION_EXTENSION)
        raw = caption_file.read_bytes() if caption_file.is_file() else b""
        new = (caption or "").strip()
        try:
            old = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            if new in (raw.decode("utf-8", errors="replace").strip(), raw.decode("latin-1").strip()):
                continue  # shown as read, not edited
            problems.append(f"{caption_file.relative_to(root).as_posix()} is not UTF-8 text (byte "
                            f"0x{raw[exc.start]:02x} at position {exc.start}; Latin-1?), so your edit was not "
                            "saved: save that file as UTF-8 in a text editor, or delete it and type the caption "
                            "here")
            continue
        if new != old:
            write_text_atomic(caption_file, new + "\n")
            changed.append(relative)
    return changed, problems

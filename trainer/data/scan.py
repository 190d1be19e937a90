"""Scanning a dataset folder: which images train, with which caption and how many repeats.

Kohya's convention is honoured where present: a folder `10_sks dog` inside the dataset folder means its images
repeat 10 times per epoch and, lacking a caption file, are captioned "sks dog". Everything else uses the
[dataset] repeats and default_caption (the dataset folder's own name is not read as `N_name`: point
dataset.dir at the folder that holds the `N_name` folders). Every image is decoded once here so that a
broken file is reported before training starts instead of crashing it hours later.

Besides dataset.dir, a job may train on dataset.reg_dir (regularisation images) and [[dataset.concepts]]
folders, each with its own repeats, captions and weights (Concept). Nothing here imports torch: the UI's
Dataset tab shows what this scan finds. docs/datasets.md describes the rules for users.
"""
from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .buckets import bucket_for_image, check_bucket_settings, kept_fraction, make_buckets
from .captions import CaptionTooLarge, read_caption_bytes, split_tags
from .errors import DatasetError
from .images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, ImageTooLarge, decoded_size, has_alpha, is_image_file

MIN_IMAGE_SIDE = 16
# Below this share of the image surviving the crop, the user probably did not mean to train on it as is.
_MIN_KEPT_FRACTION = 0.5
# A folder like `2023_photos` also matches the Kohya pattern; past this many repeats it is probably a date (or
# a typo: `100000000_x` planned an epoch list that no memory holds). Capped, as [[dataset.concepts]] repeats are.
MAX_FOLDER_REPEATS = 1000
_MAX_LISTED = 20
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")
MASK_FOLDER = "masks"


@dataclass(frozen=True)
class ImageItem:
    """One usable image: its caption before augmentation, repeats per epoch, upright size and subset
    (the Kohya folder it belongs to, else its folder relative to the dataset folder). is_class marks a
    DreamBooth class ("prior") image or a regularisation image; its repeats are ignored, TrainData pairs class
    and subject samples.
    caption_file is the sidecar the caption came from (None without one); fallback_caption is what the image
    gets when its sidecar is missing or empty (the Kohya folder name, else the default caption)."""
    path: Path
    caption: str
    repeats: float
    width: int
    height: int
    subset: str
    is_class: bool = False
    caption_file: Path | None = None
    fallback_caption: str = ""
    # From the image's concept (see Concept): None follows [dataset].
    loss_weight: float = 1.0
    flip: bool | None = None
    random_crop: bool | None = None
    shuffle_caption: bool | None = None
    # With dataset.masked_training: masks/<stem>.<image extension> beside the image, else None (the image's
    # alpha channel is its mask when it has one).
    mask_file: Path | None = None


@dataclass
class DatasetIndex:
    """The result of scan_dataset: the usable images, the files skipped with why, caption files that belong
    to no image, folders that could not be read, and warnings to show (which mention all of these)."""
    root: Path
    items: list[ImageItem]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    orphan_captions: list[Path] = field(default_factory=list)
    unreadable_folders: list[tuple[Path, str]] = field(default_factory=list)
    # Class images that are regularisation images (dataset.reg_dir, is_regularization concepts) pair with the
    # subject samples as Kohya's do; DreamBooth's own class images set False (see TrainData).
    reg_pairs_with_subjects: bool = False

    @property
    def instance_items(self) -> list[ImageItem]:
        """The subject images (everything but DreamBooth class images)."""
        return [item for item in self.items if not item.is_class]

    @property
    def class_items(self) -> list[ImageItem]:
        return [item for item in self.items if item.is_class]

    @property
    def num_images(self) -> int:
        """Subject images (class images are counted by num_class_images)."""
        return len(self.instance_items)

    @property
    def num_repeated(self) -> int:
        """Subject samples per epoch: each image counted `repeats` times (see epoch_repeats)."""
        return sum(epoch_repeats(self.instance_items, seed=0))

    @property
    def num_class_images(self) -> int:
        return len(self.class_items)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """{subset: {tag: number of images whose caption has it}}, for LoRA metadata (ss_tag_frequency)."""
        frequency: dict[str, Counter[str]] = {}
        for item in self.items:
            frequency.setdefault(item.subset, Counter()).update(set(split_tags(item.caption)))
        return {subset: dict(sorted(counts.items())) for subset, counts in frequency.items()}


def epoch_repeats(items: list[ImageItem], seed: int) -> list[int]:
    """How often each item is seen per epoch: the whole part of its repeats, plus one for a seeded share of
    the images of its subset with the same repeats (images x fraction, rounded half up), the same images every
    epoch so that every epoch has the same buckets and the step count stays exact. Which images get the extra
    sample depends on the seed; how many do not."""
    counts = [int(item.repeats) for item in items]
    groups: dict[tuple[str, float], list[int]] = {}
    for number, item in enumerate(items):
        if item.repeats != int(item.repeats):
            groups.setdefault((item.subset, item.repeats), []).append(number)
    for (subset, repeats), numbers in sorted(groups.items()):
        # Rounded up, as docs/datasets.md says (3 x 0.5 -> 2; 2 x 0.0001 -> 1, where rounding half up gave no
        # sample at all). The share is rounded to 9 places first: 10 x 0.3 is 3.0000000000000004, not 4.
        extra = math.ceil(round(len(numbers) * (repeats - int(repeats)), 9))
        for number in random.Random(f"kiln-repeats/{seed}/{subset}/{repeats}").sample(numbers, extra):
            counts[number] += 1
    return counts


@dataclass(frozen=True)
class Concept:
    """One folder of images and how they train: the [dataset] folder (dataset.dir), the regularisation folder
    (dataset.reg_dir) or a [[dataset.concepts]] table. `repeats` None reads Kohya `N_name` folders (else
    dataset.repeats); `caption` is the caption of images without a caption file. flip/random_crop/
    shuffle_caption None follow [dataset]. `label` names it in messages."""
    dir: Path
    label: str
    repeats: float | None
    caption: str
    caption_extension: str
    caption_prefix: str = ""
    caption_suffix: str = ""
    is_class: bool = False
    loss_weight: float = 1.0
    flip: bool | None = None
    random_crop: bool | None = None
    shuffle_caption: bool | None = None


def dataset_concepts(dataset_cfg: Any) -> list[Concept]:
    """The folders a [dataset] section trains on, in this order: dataset.dir, dataset.reg_dir (unless
    dataset.reg_prompt is set: then trainer/dreambooth reads it as generated class images), then each
    [[dataset.concepts]] table."""
    extension = _caption_extension(dataset_cfg.caption_extension)
    concepts = []
    if dataset_cfg.dir:
        concepts.append(Concept(Path(dataset_cfg.dir).expanduser(), "dataset.dir", None,
                                dataset_cfg.default_caption.strip(), extension))
    if dataset_cfg.reg_dir and not getattr(dataset_cfg, "reg_prompt", "").strip():
        # With reg_prompt the folder is filled with generated images and read by trainer/dreambooth.
        concepts.append(Concept(Path(dataset_cfg.reg_dir).expanduser(), "dataset.reg_dir", None, "", extension,
                                is_class=True))
    for number, table in enumerate(dataset_cfg.concepts, start=1):
        own_extension = table.get("caption_extension")
        concepts.append(Concept(
            Path(table["dir"]).expanduser(), f"dataset.concepts[{number}]", float(table.get("repeats", 1.0)),
            table.get("caption", "").strip(), _caption_extension(own_extension) if own_extension else extension,
            table.get("caption_prefix", ""), table.get("caption_suffix", ""),
            bool(table.get("is_regularization", False)), float(table.get("loss_weight", 1.0)),
            table.get("flip"), table.get("random_crop"), table.get("shuffle_caption")))
    return concepts


@dataclass(frozen=True)
class _FolderRule:
    subset: str
    repeats: float
    caption: str


def scan_dataset(dataset_cfg: Any) -> DatasetIndex:
    """Find, check and caption every image of every concept of dataset_cfg (see module doc and
    dataset_concepts). Raises DatasetError when a folder is missing or has no usable image; otherwise
    problems come back as `skipped`/`warnings`."""
    check_bucket_settings(dataset_cfg)
    concepts = dataset_concepts(dataset_cfg)
    if not concepts:
        raise DatasetError("no images to train on: set dataset.dir, or list folders as [[dataset.concepts]]")
    buckets = make_buckets(dataset_cfg.resolution, dataset_cfg.min_bucket_reso, dataset_cfg.max_bucket_reso,
                           dataset_cfg.bucket_reso_steps) if dataset_cfg.enable_bucket else []
    masked = dataset_cfg.masked_training
    root = concepts[0].dir
    # Messages name files relative to the folder that holds every concept.
    shown_root = root if len(concepts) == 1 else Path(os.path.commonpath([c.dir.absolute() for c in concepts]))
    items: list[ImageItem] = []
    skipped: list[tuple[Path, str]] = []
    caption_problems: list[str] = []
    listing = _Listing()
    for concept in concepts:
        concept_items, concept_listing = _scan_concept(concept, dataset_cfg, masked, skipped, caption_problems)
        items += concept_items
        listing.others += concept_listing.others
        listing.orphan_captions += concept_listing.orphan_captions
        listing.unreadable_folders += concept_listing.unreadable_folders
        listing.mask_folders += concept_listing.mask_folders
    if all(item.is_class for item in items):
        raise DatasetError(f"only regularisation images were found ({', '.join(c.label for c in concepts)}): "
                           "add the images to train on (dataset.dir, or concepts with is_regularization = false)")

    warnings = [message for message in (
        _unreadable_folders_warning(listing.unreadable_folders, shown_root),
        _skipped_warning(skipped, shown_root),
        _ignored_files_warning(listing.others, shown_root),
        _orphan_captions_warning(listing.orphan_captions, shown_root),
        _caption_warning(items, caption_problems, shown_root),
        _mask_warning(items, shown_root) if masked else _unused_masks_warning(listing.mask_folders, shown_root),
        _crop_warning(items, dataset_cfg, buckets, shown_root),
        _repeats_warning(items),
    ) if message]
    return DatasetIndex(root=root, items=items, skipped=skipped, warnings=warnings,
                        orphan_captions=listing.orphan_captions, unreadable_folders=listing.unreadable_folders,
                        reg_pairs_with_subjects=True)


def _scan_concept(concept: Concept, dataset_cfg: Any, masked: bool, skipped: list[tuple[Path, str]],
                  caption_problems: list[str]) -> tuple[list[ImageItem], _Listing]:
    """The usable images of one concept (skipped files and caption problems are appended to the lists)."""
    root = concept.dir
    try:
        exists = root.exists()
    except OSError as error:  # a name too long for the file system, a path through a file
        raise DatasetError(f"{_dir_key(concept)}: cannot use {str(root)[:80]}...: {error.strerror}") from None
    if not exists:
        raise DatasetError(f"dataset folder {root} ({_dir_key(concept)}) does not exist")
    if not root.is_dir():
        raise DatasetError(f"{_dir_key(concept)} = {root} is a file, not a folder of images")
    listing = _list_files(root, concept.caption_extension)
    if not listing.images:
        raise DatasetError(_no_images_message(root, listing.others, listing.unreadable_folders))
    items = []
    skipped_before = len(skipped)
    rules = {path: _folder_rule(path, root, dataset_cfg, concept) for path in listing.images}
    sizes = _image_sizes([path for path, rule in rules.items() if rule.repeats != 0])
    for path in listing.images:
        rule = rules[path]
        if rule.repeats == 0:
            skipped.append((path, f"its folder '{rule.subset}' asks for 0 repeats"))
            continue
        size_or_reason = sizes[path]
        if isinstance(size_or_reason, str):
            skipped.append((path, size_or_reason))
            continue
        width, height = size_or_reason
        caption_file = listing.captions.get(path)
        caption = (_read_caption(caption_file, root, caption_problems) if caption_file else "") or rule.caption
        items.append(ImageItem(
            path, _with_prefix_and_suffix(caption, concept), rule.repeats, width, height, rule.subset,
            is_class=concept.is_class, caption_file=caption_file, fallback_caption=rule.caption,
            loss_weight=concept.loss_weight, flip=concept.flip, random_crop=concept.random_crop,
            shuffle_caption=concept.shuffle_caption, mask_file=_mask_file(path) if masked else None))
    if not items:
        raise DatasetError(f"no usable images in {root} ({_dir_key(concept)}): all {len(listing.images)} image "
                           "files were skipped:\n" + _reasons(skipped[skipped_before:], root))
    return items, listing


def _dir_key(concept: Concept) -> str:
    return concept.label if concept.label.endswith("dir") else f"{concept.label}.dir"


def _with_prefix_and_suffix(caption: str, concept: Concept) -> str:
    """The concept's caption_prefix and caption_suffix as tags of their own, joined with ", " as the caption
    command joins them (a Kohya-style "sks, " prefix gives the same)."""
    prefix = concept.caption_prefix.strip().rstrip(",").strip()
    suffix = concept.caption_suffix.strip().lstrip(",").strip()
    return ", ".join(part for part in (prefix, caption, suffix) if part)


def _caption_extension(extension: str) -> str:
    return extension if extension.startswith(".") else "." + extension


@dataclass
class _Listing:
    """What is under a dataset folder: images (sorted), each image's caption file, other files, caption files
    that belong to no image, and folders that could not be listed (with why)."""
    images: list[Path] = field(default_factory=list)
    captions: dict[Path, Path] = field(default_factory=dict)
    others: list[Path] = field(default_factory=list)
    orphan_captions: list[Path] = field(default_factory=list)
    unreadable_folders: list[tuple[Path, str]] = field(default_factory=list)
    mask_folders: list[Path] = field(default_factory=list)


def _list_files(root: Path, caption_extension: str) -> _Listing:
    """The _Listing of root; hidden files and folders (.cache, macOS ._ files) and `masks` folders (they
    hold masks, not training images; recorded) are left out. Symlinked folders are followed once each. An
    unreadable folder is recorded instead of stopping the scan."""
    listing = _Listing()
    seen_folders: set[str] = set()

    def unreadable(error: OSError) -> None:
        listing.unreadable_folders.append((Path(error.filename or root), error.strerror or str(error)))

    for folder, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_folders:
            dirnames[:] = []
            continue
        seen_folders.add(real)
        listing.mask_folders += [Path(folder) / name for name in dirnames if name == MASK_FOLDER]
        dirnames[:] = sorted(name for name in dirnames if not name.startswith(".") and name != MASK_FOLDER)
        files = [Path(folder) / name for name in sorted(filenames) if not name.startswith(".")]
        files = [path for path in files if path.is_file()]
        images = [path for path in files if is_image_file(path)]
        caption_files = [path for path in files if path.suffix.lower() == caption_extension.lower()]
        listing.images += images
        captions = set(caption_files)  # a set: 10,000 files in a folder made a list lookup quadratic (issue 25)
        listing.others += [path for path in files if not is_image_file(path) and path not in captions]
        listing.captions.update(_match_captions(images, caption_files, caption_extension))
        image_stems = {path.stem for path in images}
        listing.orphan_captions += [path for path in caption_files if path.stem not in image_stems]
    listing.images.sort()
    return listing


def caption_file_for(image: Path, caption_extension: str) -> Path:
    """The caption file of `image` as scan_dataset finds it (extension in any letter case), or where a new
    one goes (the extension as given) when it has none. For editors that write captions."""
    siblings = [path for path in image.parent.glob(f"{glob_escape(image.stem)}.*")
                if path.suffix.lower() == caption_extension.lower() and path.is_file()]
    return _match_captions([image], siblings, caption_extension).get(image,
                                                                      image.with_name(image.stem + caption_extension))


def _match_captions(images: list[Path], caption_files: list[Path], caption_extension: str) -> dict[Path, Path]:
    """Each image's caption file in the same folder: same stem, extension in any letter case (a.TXT is a.png's
    caption as much as a.txt); the exact spelling wins when both exist."""
    by_stem: dict[str, list[Path]] = {}
    for path in caption_files:
        by_stem.setdefault(path.stem, []).append(path)
    matched = {}
    for image in images:
        candidates = by_stem.get(image.stem)
        if candidates:
            exact = [path for path in candidates if path.suffix == caption_extension]
            matched[image] = (exact or candidates)[0]
    return matched


def _folder_rule(path: Path, root: Path, dataset_cfg: Any, concept: Concept) -> _FolderRule:
    """Repeats, fallback caption and subset name: a concept table's own, else from the nearest Kohya `N_name`
    folder, else the [dataset] settings. A concept table without a caption still takes the `name` of a Kohya
    folder its image lies in (a Kohya dataset chosen as one concept keeps its "sks dog"); its repeats are the
    table's."""
    folders = path.relative_to(root).parts[:-1]
    kohya = next(((depth, match) for depth in range(len(folders), 0, -1)
                  if (match := KOHYA_FOLDER.match(folders[depth - 1]))), None)
    if concept.repeats is not None:
        caption = concept.caption or (kohya[1].group(2).strip() if kohya else "")
        return _FolderRule(root.name, concept.repeats, caption)
    if kohya:
        depth, match = kohya
        return _FolderRule("/".join(folders[:depth]), min(int(match.group(1)), MAX_FOLDER_REPEATS),
                           match.group(2).strip())
    return _FolderRule("/".join(folders) or root.name, dataset_cfg.repeats, concept.caption)


def _image_sizes(paths: list[Path]) -> dict[Path, tuple[int, int] | str]:
    """_image_size_or_reason of each path, decoded on a few threads: Pillow's decoders release the GIL, and
    decoding every image is most of a scan (10,000 images: issue 25)."""
    if len(paths) < 64:
        return {path: _image_size_or_reason(path) for path in paths}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(paths, pool.map(_image_size_or_reason, paths, chunksize=32)))


def _image_size_or_reason(path: Path) -> tuple[int, int] | str:
    """The upright (width, height) of a usable image, or why it cannot be used."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        width, height = decoded_size(path)
    except PermissionError:
        return "cannot be read: permission denied"
    except UnidentifiedImageError:
        return "not a readable image (its content is not a known image format)"
    except ImageTooLarge as error:
        return (f"its header claims {error}, more than the {MAX_IMAGE_PIXELS // 1_000_000} megapixels Kiln "
                "accepts: a decompression bomb or far too large to train on; not decoded")
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, ValueError) for bad data.
        return f"broken or truncated: {error}"
    if min(width, height) < MIN_IMAGE_SIDE:
        return f"too small to train ({width}x{height} px; each side needs at least {MIN_IMAGE_SIDE} px)"
    return width, height


def _read_caption(sidecar: Path, root: Path, problems: list[str]) -> str:
    """The caption in an image's sidecar file, or "" when it is empty or unusable (noted in `problems`)."""
    try:
        text = read_caption_bytes(sidecar).decode("utf-8-sig")
    except CaptionTooLarge as error:
        problems.append(f"{_relative(sidecar, root)}: {error}, ignored")
        return ""
    except UnicodeDecodeError:
        problems.append(f"{_relative(sidecar, root)}: not UTF-8 text, ignored")
        return ""
    except OSError as error:
        problems.append(f"{_relative(sidecar, root)}: cannot be read ({error.strerror}), ignored")
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        # Kohya reads only the first line; do the same, but say so.
        problems.append(f"{_relative(sidecar, root)}: has {len(lines)} lines, only the first is used")
    return lines[0] if lines else ""


def _mask_file(image: Path) -> Path | None:
    """masks/<image stem>.<any image extension> in the image's folder, or None."""
    folder = image.parent / MASK_FOLDER
    if not folder.is_dir():
        return None
    candidates = sorted(path for path in folder.glob(f"{glob_escape(image.stem)}.*")
                        if is_image_file(path) and path.stem == image.stem)
    return candidates[0] if candidates else None


def _mask_warning(items: list[ImageItem], root: Path) -> str:
    """Images with neither a mask file nor an alpha channel train everywhere at full weight: say which."""
    unmasked = [_relative(item.path, root) for item in items if item.mask_file is None and not has_alpha(item.path)]
    if not unmasked:
        return ""
    return (f"dataset.masked_training = true but {len(unmasked)} image(s) have no mask (no {MASK_FOLDER}/<name>.png "
            "beside them, no alpha channel); they train on the whole image:\n" + _listing(unmasked))


def _unused_masks_warning(mask_folders: list[Path], root: Path) -> str:
    if not mask_folders:
        return ""
    return (f"{len(mask_folders)} '{MASK_FOLDER}' folder(s) in {root} are not trained on (they hold masks); "
            "set dataset.masked_training = true to use them:\n"
            + _listing([_relative(path, root) for path in mask_folders]))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _listing(lines: list[str]) -> str:
    shown = [f"  {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"  ... and {len(lines) - _MAX_LISTED} more")
    return "\n".join(shown)


def _reasons(skipped: list[tuple[Path, str]], root: Path) -> str:
    return _listing([f"{_relative(path, root)}: {reason}" for path, reason in skipped])


def _no_images_message(root: Path, other_paths: list[Path], unreadable: list[tuple[Path, str]]) -> str:
    accepted = " ".join(IMAGE_EXTENSIONS)
    if unreadable:
        return f"dataset folder {root} has no readable images:\n" + _unreadable_folders_warning(unreadable, root)
    if not other_paths:
        return (f"dataset folder {root} is empty: put images ({accepted}) in it, or in subfolders named like "
                f"'10_sks dog' (10 repeats, caption 'sks dog')")
    names = ", ".join(_relative(path, root) for path in other_paths[:_MAX_LISTED])
    more = f" and {len(other_paths) - _MAX_LISTED} more" if len(other_paths) > _MAX_LISTED else ""
    return (f"dataset folder {root} has no images: found {len(other_paths)} other file(s) ({names}{more}); "
            f"accepted image extensions: {accepted} (any letter case)")


def _unreadable_folders_warning(unreadable: list[tuple[Path, str]], root: Path) -> str:
    if not unreadable:
        return ""
    return (f"{len(unreadable)} folder(s) in {root} cannot be read, so their images are not used (check "
            "their permissions):\n" + _listing([f"{_relative(path, root)}: {why}" for path, why in unreadable]))


def _orphan_captions_warning(orphans: list[Path], root: Path) -> str:
    if not orphans:
        return ""
    return (f"{len(orphans)} caption file(s) in {root} have no image of the same name beside them (renamed or "
            "deleted image?); they are not used:\n" + _listing([_relative(path, root) for path in orphans]))


def _skipped_warning(skipped: list[tuple[Path, str]], root: Path) -> str:
    if not skipped:
        return ""
    return f"skipped {len(skipped)} unusable file(s) in {root}:\n" + _reasons(skipped, root)


def _ignored_files_warning(other_paths: list[Path], root: Path) -> str:
    if not other_paths:
        return ""
    return (f"ignored {len(other_paths)} file(s) in {root} that are not images of an accepted type "
            f"({' '.join(IMAGE_EXTENSIONS)}):\n" + _listing([_relative(path, root) for path in other_paths]))


def _caption_warning(items: list[ImageItem], problems: list[str], root: Path) -> str:
    uncaptioned = [_relative(item.path, root) for item in items if not item.caption]
    parts = []
    if uncaptioned:
        parts.append(f"{len(uncaptioned)} image(s) in {root} have no caption (no sidecar caption file, no "
                     f"'N_name' folder, empty dataset.default_caption):\n" + _listing(uncaptioned))
    if problems:
        parts.append(f"caption file problems in {root}:\n" + _listing(problems))
    return "\n".join(parts)


def _crop_warning(items: list[ImageItem], dataset_cfg: Any, buckets: list[tuple[int, int]], root: Path) -> str:
    lines = []
    for item in items:
        bucket = bucket_for_image(item.width, item.height, dataset_cfg, buckets)
        kept = kept_fraction(item.width, item.height, bucket)
        if kept < _MIN_KEPT_FRACTION:
            lines.append(f"{_relative(item.path, root)}: {item.width}x{item.height} trains as "
                         f"{bucket[0]}x{bucket[1]}, keeping {kept:.0%} of the image")
    if not lines:
        return ""
    return (f"{len(lines)} image(s) have an extreme aspect ratio: most of each will be cropped away "
            f"(crop them yourself, or widen dataset.min_bucket_reso/max_bucket_reso):\n" + _listing(lines))


def _repeats_warning(items: list[ImageItem]) -> str:
    asked = {}
    for subset in {item.subset for item in items}:
        match = KOHYA_FOLDER.match(subset.rsplit("/", 1)[-1])
        if match and int(match.group(1)) > MAX_FOLDER_REPEATS:
            asked[subset] = int(match.group(1))
    return "\n".join(f"folder '{subset}' asks for {repeats} repeats per epoch (Kohya naming: N_name); Kiln reads "
                     f"at most {MAX_FOLDER_REPEATS}; rename it if that is not meant"
                     for subset, repeats in sorted(asked.items()))

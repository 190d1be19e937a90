"""The dataset doctor: what in a dataset folder will hurt training, found before hours are spent on it.

It reads the folder exactly as training will (the same scan: Kohya `N_name` folders, captions, repeats,
buckets) and looks at every usable image once, at a small size. Each finding names its files and what to do.
Nothing is changed unless the user asks: `move_duplicates_aside` is the one action, and it moves files out of
the dataset folder (with their captions) rather than deleting anything.

Thresholds are heuristics with a reason each (see the constants); they are printed in the findings so a user
can judge them.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Perceptual hashes (64 bits) this close are the same picture re-encoded, resized or lightly edited; unrelated
# photos differ in about half their bits.
NEAR_DUPLICATE_BITS = 6
# Sharpness is the variance of the Laplacian of the grey image scaled to SHARPNESS_SIDE px. An image is called
# blurry only when it is both below the absolute floor and far below the dataset's own median, so a set of
# flat-colour illustrations (all low) is not flagged wholesale.
SHARPNESS_SIDE = 512
BLUR_FLOOR = 100.0
BLUR_MEDIAN_FRACTION = 0.2
# Upscaling an image by more than this into its bucket visibly softens what the model learns.
UPSCALE_WARNING = 1.5
# Wider or taller than this lands in an extreme bucket and loses much of the image to the crop.
EXTREME_ASPECT = 2.5
# CLIP reads 75 tokens per chunk; Kiln does not extend past one, so a longer caption is cut.
CAPTION_TOKEN_LIMIT = 75
# A tag used by one image only, in a dataset this large, is more often a typo than a concept.
RARE_TAG_MIN_IMAGES = 10
# One concept seen this many times more per epoch than another usually drowns the smaller one.
CONCEPT_IMBALANCE = 4.0
_EXIF_ORIENTATION = 0x0112


@dataclass
class Finding:
    """One problem: a short kind (for filters and tests), what is wrong, the files, and what to do."""
    kind: str
    message: str
    files: list[str]
    advice: str


@dataclass
class ConceptSummary:
    subset: str
    images: int
    repeats: int

    @property
    def per_epoch(self) -> int:
        return self.images * self.repeats


@dataclass
class DoctorReport:
    root: str
    resolution: int
    images: int
    findings: list[Finding] = field(default_factory=list)
    concepts: list[ConceptSummary] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def kinds(self) -> Counter[str]:
        return Counter(finding.kind for finding in self.findings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for concept, summary in zip(data["concepts"], self.concepts):
            concept["per_epoch"] = summary.per_epoch
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        lines = [f"Dataset doctor: {self.root} ({self.images} images, training resolution {self.resolution} px)"]
        lines.append("Concepts: " + "; ".join(
            f"{c.subset}: {c.images} images x {c.repeats} repeats = {c.per_epoch} per epoch" for c in self.concepts))
        for path, reason in self.skipped:
            lines.append(f"skipped (training will skip it too): {path}: {reason}")
        if not self.findings:
            lines.append("No problems found.")
        for finding in self.findings:
            lines.append(f"\n[{finding.kind}] {finding.message}")
            lines.extend(f"  - {name}" for name in finding.files[:20])
            if len(finding.files) > 20:
                lines.append(f"  ... and {len(finding.files) - 20} more")
            lines.append(f"  what to do: {finding.advice}")
        return "\n".join(lines)


@dataclass
class _Look:
    """What the doctor measured of one image."""
    name: str
    path: Path
    width: int
    height: int
    phash: Any
    sharpness: float
    exif_rotated: bool


def examine_dataset(dataset_dir: str | os.PathLike[str], *, resolution: int = 512, trigger: str = "",
                    dataset_settings: dict[str, Any] | None = None) -> DoctorReport:
    """Scan `dataset_dir` as training would and report what will hurt. `trigger` is the word every caption
    should contain (empty: not checked); `dataset_settings` are extra [dataset] keys (repeats, caption
    extension, buckets) so the doctor sees the same buckets as the job."""
    index, settings = _scan(Path(dataset_dir), resolution, dataset_settings or {})
    root = index.root
    looks = [_look(item.path, root) for item in index.items]
    report = DoctorReport(root=str(root), resolution=settings.resolution, images=len(looks),
                          skipped=[(_relative(path, root), reason) for path, reason in index.skipped])
    report.concepts = _concepts(index)
    for check in (_duplicates(looks), _blurry(looks), _upscaled(index, settings, root),
                  _extreme_aspect(looks), _exif_rotated(looks), *_caption_findings(index, trigger, root),
                  _concept_imbalance(report.concepts)):
        if check is not None:
            report.findings.append(check)
    return report


def move_duplicates_aside(report: DoctorReport) -> list[tuple[str, str]]:
    """Move all but the first (kept) image of each near-duplicate group (and its caption files) to a folder beside
    the dataset, `<name>-duplicates/`, keeping sub-folders; returns (from, to) pairs. Never overwrites."""
    root = Path(report.root)
    target_root = root.with_name(root.name + "-duplicates")
    moved: list[tuple[str, str]] = []
    for finding in report.findings:
        if finding.kind != "duplicates":
            continue
        for group in _groups_of(finding):
            for name in group[1:]:
                source = root / name
                for companion in [source, *_caption_files(source)]:
                    target = target_root / companion.relative_to(root)
                    if target.exists():
                        raise FileExistsError(f"{target} already exists; nothing was moved over it")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(companion, target)  # a rename: the file is never half-moved
                    moved.append((str(companion), str(target)))
    return moved


def _scan(root: Path, resolution: int, extra: dict[str, Any]):
    """The training scan, with the schema's defaults for every [dataset] key not given."""
    from .config import parse_job
    from .data.scan import scan_dataset

    settings = {"dir": str(root), "resolution": resolution, **extra}
    cfg = parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"}, "dataset": settings})
    dataset = cfg.dataset
    # Bucket bounds left at 0 follow the resolution, as training resolves them (half and double).
    if not dataset.min_bucket_reso:
        dataset.min_bucket_reso = dataset.resolution // 2
    if not dataset.max_bucket_reso:
        dataset.max_bucket_reso = dataset.resolution * 2
    return scan_dataset(dataset), dataset


def _look(path: Path, root: Path) -> _Look:
    import imagehash

    with Image.open(path) as image:
        width, height = image.size  # before draft(), which may shrink a JPEG as it decodes
        orientation = image.getexif().get(_EXIF_ORIENTATION)
        if orientation in (5, 6, 7, 8):  # shown turned by 90 degrees
            width, height = height, width
        image.draft("RGB", (SHARPNESS_SIDE, SHARPNESS_SIDE))  # JPEGs decode straight at a smaller size
        upright = ImageOps.exif_transpose(image)
        upright.thumbnail((SHARPNESS_SIDE, SHARPNESS_SIDE))
        grey = upright.convert("L")
    return _Look(_relative(path, root), path, width, height, imagehash.phash(grey), _sharpness(grey),
                 orientation not in (None, 1))


def _sharpness(grey: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian (0..255 grey levels) of the image at most SHARPNESS_SIDE px on the
    longer side. Small images are not upscaled for it: that would call them blurry, and `small` says that."""
    pixels = np.asarray(grey, dtype=np.float64)
    if min(pixels.shape) < 3:  # a sliver (16x2000 shrinks to 1 px wide) has no Laplacian: not judged (NaN)
        return float("nan")
    laplacian = (pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:]
                 - 4 * pixels[1:-1, 1:-1])
    return float(laplacian.var())


def _near_duplicate_groups(looks: list[_Look]) -> list[list[_Look]]:
    """Each look joins the first group whose first member's hash is within NEAR_DUPLICATE_BITS, else starts
    one. Comparing with every group was quadratic (200 s for 10,000 images, issue 25); instead, by pigeonhole,
    two 64-bit hashes that differ in at most k bits agree exactly on at least one of k + 1 bands, so only the
    groups that share a band value with the look are compared."""
    bands = NEAR_DUPLICATE_BITS + 1
    edges = [64 * i // bands for i in range(bands + 1)]
    band_values = lambda bits: [(i, (bits >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi)
                                in enumerate(zip(edges, edges[1:]))]
    groups: list[list[_Look]] = []
    heads: list[int] = []  # each group's first hash, as an int
    by_band: dict[tuple[int, int], list[int]] = {}
    for look in looks:
        bits = int(str(look.phash), 16)
        keys = band_values(bits)
        candidates = sorted({number for key in keys for number in by_band.get(key, ())})
        match = next((n for n in candidates if (heads[n] ^ bits).bit_count() <= NEAR_DUPLICATE_BITS), None)
        if match is not None:
            groups[match].append(look)
            continue
        for key in keys:
            by_band.setdefault(key, []).append(len(groups))
        groups.append([look])
        heads.append(bits)
    return groups


def _duplicates(looks: list[_Look]) -> Finding | None:
    groups = _near_duplicate_groups(looks)
    # The copy to keep comes first: the most pixels, then one with a caption file, then the first name.
    repeated = [sorted(group, key=lambda look: (-look.width * look.height, not _caption_files(look.path), look.name))
                for group in groups if len(group) > 1]
    if not repeated:
        return None
    files = [" = ".join(look.name for look in group) for group in repeated]
    extra = sum(len(group) - 1 for group in repeated)
    return Finding("duplicates", f"{extra} image(s) are near-duplicates of another (perceptual hashes within "
                   f"{NEAR_DUPLICATE_BITS} of 64 bits); each group is one line", files,
                   "keep the best of each group: duplicates train that picture several times over. "
                   "`trainer doctor DIR --move-duplicates` moves all but the first of each line aside "
                   "(the largest; among equals, one with a caption).")


def _groups_of(finding: Finding) -> list[list[str]]:
    return [line.split(" = ") for line in finding.files]


def _blurry(looks: list[_Look]) -> Finding | None:
    if not looks:
        return None
    measured = [look.sharpness for look in looks if np.isfinite(look.sharpness)]
    if not measured:
        return None
    median = float(np.median(measured))
    limit = min(BLUR_FLOOR, BLUR_MEDIAN_FRACTION * median)
    blurry = [look for look in looks if look.sharpness < limit]
    if not blurry:
        return None
    return Finding("blurry", f"{len(blurry)} image(s) are much less sharp than the rest (Laplacian variance "
                   f"under {limit:.0f}; the dataset's median is {median:.0f})",
                   [f"{look.name} (sharpness {look.sharpness:.0f})" for look in blurry],
                   "replace them with sharp versions or remove them: the model learns the blur too.")


def _upscaled(index, settings, root: Path) -> Finding | None:
    from .data.buckets import bucket_for_image, make_buckets

    buckets = make_buckets(settings.resolution, settings.min_bucket_reso, settings.max_bucket_reso,
                           settings.bucket_reso_steps) if settings.enable_bucket else []
    small = []
    for item in index.items:
        bucket = bucket_for_image(item.width, item.height, settings, buckets)
        factor = max(bucket[0] / item.width, bucket[1] / item.height)
        if factor > UPSCALE_WARNING:
            small.append(f"{_relative(item.path, root)} ({item.width}x{item.height} -> bucket "
                         f"{bucket[0]}x{bucket[1]}, upscaled {factor:.1f}x)")
    if not small:
        return None
    return Finding("small", f"{len(small)} image(s) are much smaller than the training resolution "
                   f"({settings.resolution} px) and will be upscaled more than {UPSCALE_WARNING}x", small,
                   "use larger originals, or lower dataset.resolution, or turn on dataset.bucket_no_upscale.")


def _extreme_aspect(looks: list[_Look]) -> Finding | None:
    extreme = [look for look in looks if max(look.width / look.height, look.height / look.width) > EXTREME_ASPECT]
    if not extreme:
        return None
    return Finding("aspect", f"{len(extreme)} image(s) are more than {EXTREME_ASPECT}:1 wide or tall",
                   [f"{look.name} ({look.width}x{look.height})" for look in extreme],
                   "crop them closer to the subject: extreme buckets hold few images and lose detail.")


def _exif_rotated(looks: list[_Look]) -> Finding | None:
    rotated = [look.name for look in looks if look.exif_rotated]
    if not rotated:
        return None
    return Finding("exif-rotated", f"{len(rotated)} image(s) are stored sideways with an EXIF rotation", rotated,
                   "nothing to do if they look upright in the gallery (Kiln turns them as a viewer does); "
                   "other tools that ignore EXIF will see them sideways.")


def _caption_findings(index, trigger: str, root: Path) -> list[Finding | None]:
    items = index.items
    empty = [_relative(item.path, root) for item in items if not item.caption.strip()]
    long = [f"{_relative(item.path, root)} (about {token_estimate(item.caption)} tokens)" for item in items
            if token_estimate(item.caption) > CAPTION_TOKEN_LIMIT]
    findings: list[Finding | None] = [
        Finding("empty-caption", f"{len(empty)} image(s) have no caption at all", empty,
                "write a caption (or a folder name `N_token class`) so the model knows what it sees.")
        if empty else None,
        Finding("long-caption", f"{len(long)} caption(s) are longer than CLIP reads ({CAPTION_TOKEN_LIMIT} "
                "tokens); the end is cut off", long, "shorten them; put what matters first.") if long else None,
    ]
    if trigger:
        pattern = re.compile(rf"(?<!\w){re.escape(trigger)}(?!\w)", re.IGNORECASE)
        missing = [_relative(item.path, root) for item in items if item.caption.strip()
                   and not pattern.search(item.caption)]
        findings.append(Finding("no-trigger", f"{len(missing)} caption(s) do not contain the trigger word "
                                f"'{trigger}'", missing, f"add '{trigger}' to them, or the model will not tie "
                                "those images to it.") if missing else None)
    findings.append(_rare_tags(items, trigger))
    return findings


def _rare_tags(items, trigger: str) -> Finding | None:
    """Tags used by exactly one image in a dataset big enough for that to stand out (often typos)."""
    from .data.captions import split_tags

    if len(items) < RARE_TAG_MIN_IMAGES:
        return None
    counts: Counter[str] = Counter()
    for item in items:
        counts.update({tag.lower() for tag in split_tags(item.caption)})
    common = {tag for tag, n in counts.items() if n >= 3}
    rare = sorted(tag for tag, n in counts.items() if n == 1 and tag != trigger.lower() and any(
        _close(tag, other) for other in common))
    if not rare:
        return None
    return Finding("rare-tag", f"{len(rare)} tag(s) appear once and look like a misspelling of a common tag",
                   rare, "fix the spelling so the tag means one thing everywhere.")


def _close(a: str, b: str) -> bool:
    """About one typo apart (a letter added, dropped, changed or two swapped), for words long enough that
    this is unlikely by chance."""
    if a == b or min(len(a), len(b)) < 4 or abs(len(a) - len(b)) > 1:
        return False
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 1 - 2 / (len(a) + len(b)) - 1e-9


def _concepts(index) -> list[ConceptSummary]:
    by_subset: dict[str, list[Any]] = {}
    for item in index.instance_items:
        by_subset.setdefault(item.subset, []).append(item)
    return [ConceptSummary(subset, len(group), group[0].repeats) for subset, group in sorted(by_subset.items())]


def _concept_imbalance(concepts: list[ConceptSummary]) -> Finding | None:
    if len(concepts) < 2:
        return None
    smallest = min(concepts, key=lambda c: c.per_epoch)
    largest = max(concepts, key=lambda c: c.per_epoch)
    if largest.per_epoch < CONCEPT_IMBALANCE * smallest.per_epoch:
        return None
    return Finding("imbalance", f"concept '{largest.subset}' is seen {largest.per_epoch / smallest.per_epoch:.1f}x "
                   f"as often per epoch as '{smallest.subset}'",
                   [f"{c.subset}: {c.images} images x {c.repeats} repeats = {c.per_epoch}" for c in concepts],
                   "balance them with the folder repeats (`N_name`): images x repeats similar for each concept.")


def token_estimate(caption: str) -> int:
    """CLIP BPE tokens, estimated without loading a tokenizer: words and punctuation, long words as several."""
    pieces = re.findall(r"\w+|[^\w\s]", caption)
    return sum(max(1, (len(piece) + 5) // 6) for piece in pieces)


def _caption_files(image: Path) -> list[Path]:
    return [p for p in image.parent.glob(image.stem + ".*") if p != image and p.suffix.lower() in (".txt", ".caption")]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)

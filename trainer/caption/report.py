"""The tag-frequency report: how many images carry each tag, per subset, counted exactly as the LoRA metadata
(ss_tag_frequency) counts them, by DatasetIndex.tag_frequency()."""
from __future__ import annotations

from ..data.scan import scan_dataset
from ..data.settings import dataset_settings


def dataset_tag_frequency(dataset_dir: str, caption_extension: str = ".txt") -> dict[str, dict[str, int]]:
    """{subset: {tag: number of images whose caption has it}}. Raises DatasetError for a missing or empty folder."""
    index = scan_dataset(dataset_settings(dataset_dir, caption_extension=caption_extension,
                                          enable_bucket=False))
    return index.tag_frequency()


def format_tag_frequency(frequency: dict[str, dict[str, int]]) -> str:
    """One block per subset, its tags most frequent first (ties alphabetical)."""
    blocks = []
    for subset, counts in sorted(frequency.items()):
        ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
        lines = [f"  {count:6d}  {tag}" for tag, count in ranked]
        blocks.append("\n".join([f"{subset}: {len(counts)} tag(s)", *lines]))
    return "\n".join(blocks)

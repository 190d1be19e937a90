"""The tag-frequency report: how many images carry each tag, per subset, counted exactly as the LoRA metadata
(ss_tag_frequency) counts them, by DatasetIndex.tag_frequency(); and for natural-language captions, how many
captions hold each word and phrase. Torch-free (the UI uses it)."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from ..data.captions import split_tags
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


# Words too common to say anything about a dataset; a phrase may hold them inside ("a woman in a red dress")
# but not start or end with them.
STOP_WORDS = frozenset(
    "a an the and or but of in on at to for with by from as is are was were be been being it its this that these "
    "those there here which who whom whose what while has have had does do did not no so such into onto over under "
    "than then very can could may might will would shall should up down out off about above below between".split())
PHRASE_SIZES = (1, 2, 3, 4)
_WORD = re.compile(r"[\w'-]+")


def looks_like_sentences(caption: str) -> bool:
    """Natural language rather than tags: it ends a sentence with a full stop, or its comma-separated parts
    average more than four words ("1girl, long hair, red dress" and "sks toy, a toy on a table" are tags)."""
    parts = split_tags(caption)
    if not parts:
        return False
    return caption.rstrip().endswith((".", "!", "?")) or sum(len(part.split()) for part in parts) / len(parts) > 4


def phrase_frequency(captions: Iterable[str], sizes: Iterable[int] = PHRASE_SIZES,
                     min_count: int = 2) -> list[tuple[str, int]]:
    """Words and phrases (2-4 words) of natural-language captions with the number of captions holding each,
    most frequent first (longer phrases first among equals). Single words skip stop words; a phrase neither
    starts nor ends with one. Phrases of one caption only are left out (`min_count`)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        words = [word.strip("'-") for word in _WORD.findall(caption.lower())]
        words = [word for word in words if word]
        found = set()
        for size in sizes:
            for start in range(len(words) - size + 1):
                gram = words[start:start + size]
                if gram[0] not in STOP_WORDS and gram[-1] not in STOP_WORDS:
                    found.add(" ".join(gram))
        counts.update(found)
    ranked = [(phrase, count) for phrase, count in counts.items() if count >= min_count]
    return sorted(ranked, key=lambda pair: (-pair[1], -len(pair[0].split()), pair[0]))


def dataset_phrase_frequency(dataset_dir: str, caption_extension: str = ".txt") -> list[tuple[str, int]]:
    """phrase_frequency over the dataset's natural-language captions (tag lists are the tag report's)."""
    index = scan_dataset(dataset_settings(dataset_dir, caption_extension=caption_extension,
                                          enable_bucket=False))
    return phrase_frequency(item.caption for item in index.items if looks_like_sentences(item.caption))


def format_phrase_frequency(ranked: list[tuple[str, int]], limit: int = 60) -> str:
    lines = [f"  {count:6d}  {phrase}" for phrase, count in ranked[:limit]]
    more = [f"  ... and {len(ranked) - limit} more"] if len(ranked) > limit else []
    return "\n".join([f"words and phrases of natural-language captions: {len(ranked)}", *lines, *more])

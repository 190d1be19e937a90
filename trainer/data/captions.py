"""Caption handling: splitting into tags, and the per-sample shuffle / keep-tokens / dropout augmentation."""
from __future__ import annotations

import random


def split_tags(caption: str) -> list[str]:
    """The comma-separated parts of a caption, stripped, empty parts dropped."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def process_caption(caption: str, shuffle: bool, keep_tokens: int, dropout_rate: float,
                    rng: random.Random) -> str:
    """The caption one training sample sees.

    With probability dropout_rate the caption is dropped (empty string: the model also learns the
    unconditioned image). With shuffle, the first keep_tokens tags stay in place (usually the trigger word)
    and the rest are shuffled. rng supplies every random choice, so equal rng states give equal captions.
    """
    if rng.random() < dropout_rate:
        return ""
    if not shuffle:
        return caption
    tags = split_tags(caption)
    fixed, movable = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(movable)
    return ", ".join(fixed + movable)

"""Caption handling: splitting into tags, and the per-sample wildcards / dropout / keep-tokens / shuffle / tag
dropout augmentation."""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

# {a|b|c}: one option per sample. At least one "|", so a lone {word} stays as written.
_WILDCARD = re.compile(r"\{([^{}]*\|[^{}]*)\}")


# A caption is a line or a few; a sidecar past this size is not one (a 2 GiB file exhausted memory in check,
# doctor and run before it was capped; issue 25). CLIP reads 75 tokens, Kiln at most a few hundred.
MAX_CAPTION_BYTES = 1 << 20


class CaptionTooLarge(ValueError):
    """A caption file larger than MAX_CAPTION_BYTES; nothing of it was read."""


def read_caption_bytes(path: Path) -> bytes:
    """A caption file's bytes, refusing (CaptionTooLarge) one too large to be a caption before reading it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_CAPTION_BYTES:
            raise CaptionTooLarge(f"{size:,} bytes, more than the {MAX_CAPTION_BYTES >> 20} MiB a caption file may "
                                  "have")
        return f.read(MAX_CAPTION_BYTES + 1)


def split_tags(caption: str) -> list[str]:
    """The comma-separated parts of a caption, stripped, empty parts dropped."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def has_wildcard(caption: str) -> bool:
    return bool(_WILDCARD.search(caption))


def expand_wildcards(caption: str, rng: random.Random) -> str:
    """Each {a|b|c} replaced by one of its options, chosen by rng (one draw per wildcard, left to right)."""
    return _WILDCARD.sub(lambda match: rng.choice(match.group(1).split("|")).strip(), caption)


def process_caption(caption: str, shuffle: bool, keep_tokens: int, dropout_rate: float,
                    rng: random.Random, *, tag_dropout_rate: float = 0.0, keep_tokens_separator: str = "",
                    wildcards: bool = False) -> str:
    """The caption one training sample sees.

    With wildcards, each {a|b|c} first becomes one of its options. With probability dropout_rate the caption
    is dropped (empty string: the model also learns the unconditioned image). The leading tags stay in place:
    those before keep_tokens_separator when the caption holds it (the separator itself is removed), else the
    first keep_tokens; with shuffle the other tags are shuffled, and each of them is left out with probability
    tag_dropout_rate. rng supplies every random choice, so equal rng states give equal captions; a setting
    that is off draws nothing, so turning on a new one leaves the earlier draws as they were.
    """
    if wildcards:
        caption = expand_wildcards(caption, rng)
    if rng.random() < dropout_rate:
        return ""
    separated = bool(keep_tokens_separator) and keep_tokens_separator in caption
    if not (shuffle or tag_dropout_rate or separated):
        return caption
    if separated:
        head, _, tail = caption.partition(keep_tokens_separator)
        fixed, movable = split_tags(head), split_tags(tail.replace(keep_tokens_separator, ","))
    else:
        tags = split_tags(caption)
        fixed, movable = tags[:keep_tokens], tags[keep_tokens:]
    if shuffle:
        rng.shuffle(movable)
    if tag_dropout_rate:
        movable = [tag for tag in movable if rng.random() >= tag_dropout_rate]
    return ", ".join(fixed + movable)

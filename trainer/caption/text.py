"""Caption text operations: captions from names, how a new caption meets an old one, and the edits (find and
replace, prefix and suffix, tag clean-up). Pure string functions, no files."""
from __future__ import annotations

import re
from pathlib import Path

from ..data.captions import split_tags
from .options import CaptionOptions

TAG_SEPARATOR = ", "
_SEPARATOR_CHARS = ", "
# Kohya's folder convention: "10_sks dog" holds images repeated 10 times, captioned "sks dog".
_REPEATS_PREFIX = re.compile(r"^\d+_")
# Tags this short are emoticons ("^_^", "o_o"): their underscores are part of the picture, not word gaps.
_EMOTICON_MAX_LEN = 3


def caption_from_name(image: Path, source: str) -> str:
    """A caption from the image's file name ("red_car_01.png" -> "red car") or folder name ("10_sks dog" ->
    "sks dog"). A trailing number is taken for a counter and dropped unless nothing else is left."""
    if source == "folder":
        return _REPEATS_PREFIX.sub("", image.parent.name).strip()
    words = image.stem.replace("_", " ").split()
    while len(words) > 1 and words[-1].strip("()").isdigit():
        words.pop()
    return " ".join(words)


def combine(existing: str | None, generated: str | None, mode: str) -> str | None:
    """The caption before edits. skip-existing keeps an existing caption; overwrite puts the generated one in
    its place; append adds it after the existing one, leaving out tags the existing caption already has."""
    if generated is None or (existing and mode == "skip-existing"):
        return existing
    if existing and mode == "append":
        present = set(split_tags(existing))
        new = [tag for tag in split_tags(generated) if tag not in present]
        return TAG_SEPARATOR.join([existing, *new]) if new else existing
    return generated


def edit(caption: str, options: CaptionOptions) -> str:
    """Apply the requested edits in a fixed order: phrases dropped, find/replace, the trigger word, prefix and
    suffix, then clean-up (so clean-up also removes a duplicated prefix tag). Trigger, prefix and suffix are
    added only when not already there, so running the same command twice changes nothing the second time."""
    if options.drop:
        caption = drop_phrases(caption, split_phrases(options.drop))
    if options.find:
        caption = caption.replace(options.find, options.replace)
    # Kohya users type a prefix as "sks dog, " and a suffix as ", photo": the separator is Kiln's to add, so a
    # typed one is dropped rather than doubled ("sks dog, , toy").
    if options.trigger:
        caption = place_trigger(caption, options.trigger, split_phrases(options.trigger_replaces))
    prefix, suffix = options.prefix.rstrip(_SEPARATOR_CHARS), options.suffix.lstrip(_SEPARATOR_CHARS)
    if prefix and not caption.startswith(prefix):
        caption = TAG_SEPARATOR.join(part for part in (prefix, caption) if part)
    if suffix and not caption.endswith(suffix):
        caption = TAG_SEPARATOR.join(part for part in (caption, suffix) if part)
    if options.clean or options.replace_underscores:
        caption = clean_tags(caption, dedupe=options.clean, underscores=options.replace_underscores)
    return caption.strip()


def clean_tags(caption: str, dedupe: bool = True, underscores: bool = False) -> str:
    """Tags trimmed, inner runs of spaces collapsed, empty tags dropped; with `dedupe` a repeated tag keeps only
    its first place; with `underscores` "long_hair" becomes "long hair" (emoticons like "^_^" are kept)."""
    tags = [" ".join(tag.split()) for tag in split_tags(caption)]
    if underscores:
        tags = [underscores_to_spaces(tag) for tag in tags]
    if dedupe:
        tags = list(dict.fromkeys(tags))
    return TAG_SEPARATOR.join(tags)


def underscores_to_spaces(tag: str) -> str:
    return tag if len(tag) <= _EMOTICON_MAX_LEN else tag.replace("_", " ")


# A phrase dropped from the start of a sentence can leave a stray joiner ("The image shows: a cat").
_LEADING_JOINERS = re.compile(r"^[\s,:;\-]+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def split_phrases(text: str) -> list[str]:
    """'a photo of, The image shows' -> ['a photo of', 'The image shows'] (the flags' comma-separated lists)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def one_line(text: str) -> str:
    """A generated caption as one line: control characters out, line breaks and runs of spaces become one
    space (a caption file is one line for every trainer that reads it)."""
    return " ".join(_CONTROL.sub(" ", text).split())


def drop_phrases(caption: str, phrases: list[str]) -> str:
    """Every occurrence of each phrase removed (whole words, any letter case), with the joiner it leaves at a
    sentence start; a sentence that now starts in lower case gets its capital back."""
    for phrase in phrases:
        pattern = re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", re.IGNORECASE)
        pieces = pattern.split(caption)
        if len(pieces) == 1:
            continue
        rebuilt = pieces[0]
        for piece in pieces[1:]:
            at_sentence_start = not rebuilt.strip() or rebuilt.rstrip()[-1] in ".!?"
            if at_sentence_start:
                piece = _LEADING_JOINERS.sub("", piece)
                piece = piece[:1].upper() + piece[1:]
                rebuilt = rebuilt.rstrip() + (" " if rebuilt.strip() else "")
            rebuilt += piece
        caption = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(rebuilt.split()))
    return caption.strip(_SEPARATOR_CHARS + ";:")


def place_trigger(caption: str, trigger: str, replaces: list[str]) -> str:
    """The trigger word in the caption: in place of the earliest of the `replaces` phrases in the caption (that
    one mention only, any letter case: "A woman in red. The woman smiles." -> "ohwx woman in red. The woman
    smiles."), else first, joined with ", ". A caption that already holds the trigger is left as it is."""
    trigger = trigger.strip()
    if re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption):
        return caption
    if replaces:
        pattern = re.compile("|".join(rf"(?<!\w){re.escape(phrase)}(?!\w)" for phrase in replaces), re.IGNORECASE)
        replaced, count = pattern.subn(lambda _: trigger, caption, count=1)
        if count:
            return replaced
    return TAG_SEPARATOR.join(part for part in (trigger, caption) if part)

"""The captioning methods behind one small interface, and the choice between them."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from PIL import Image

from .options import CaptionOptions
from .text import caption_from_name


class Captioner(Protocol):
    batch_size: int  # images captioned together; stop commands are checked between batches
    needs_images: bool  # False: captions come from names alone and no pixels are decoded

    def caption_batch(self, paths: Sequence[Path], images: Sequence[Image.Image]) -> list[str]:
        """One caption per path (images is empty when needs_images is False)."""
        ...


class BasicCaptioner:
    """The basic method: a fixed text, or the file or folder name."""
    batch_size = 1
    needs_images = False

    def __init__(self, text: str, from_name: str):
        self.text = text
        self.from_name = from_name

    def caption_batch(self, paths: Sequence[Path], images: Sequence[Image.Image]) -> list[str]:
        if self.text:
            return [self.text for _ in paths]
        return [caption_from_name(path, self.from_name) for path in paths]


def make_captioner(options: CaptionOptions) -> Captioner | None:
    """The captioner the options ask for; None when no caption is generated (a basic run that only edits).
    The model-based ones load their model here, so a missing model fails before any file is touched."""
    if options.method == "blip":
        from .blip import BlipCaptioner

        return BlipCaptioner(options.model_or_default, batch_size=options.batch_size, beams=options.beams,
                             min_length=options.min_length, max_length=options.max_length)
    if options.method == "wd14":
        from .wd14 import Wd14Tagger

        return Wd14Tagger(options.model_or_default, batch_size=options.batch_size,
                          general_threshold=options.general_threshold,
                          character_threshold=options.character_threshold,
                          exclude_tags=options.exclude_tags, rating=options.rating)
    if options.method == "florence2":
        from .florence2 import Florence2Captioner

        return Florence2Captioner(options)
    if options.method in ("joycaption", "qwen-vl"):
        from .chat_vlm import ChatCaptioner

        return ChatCaptioner(options)
    if options.method == "basic" and (options.text or options.from_name != "none"):
        return BasicCaptioner(options.text, options.from_name)
    return None

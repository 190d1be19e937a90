"""Florence-2 captions through transformers' native Florence2ForConditionalGeneration and Florence2Processor
(the florence-community/* checkpoints, or a folder saved with save_pretrained). Its task tokens choose the
length: <CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>. Beam search (3), as the model card runs it."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .model_source import resolve_model_source
from .options import CaptionOptions
from .prompts import florence_task, max_new_tokens
from .text import one_line
from .vlm import Runtime, generate, load_model, load_processor

WHAT = "Florence-2"
BEAMS = 3


class Florence2Captioner:
    needs_images = True

    def __init__(self, options: CaptionOptions, device: str | None = None):
        source = resolve_model_source(options.model_or_default, WHAT)  # before anything heavy
        from transformers import Florence2ForConditionalGeneration

        self.runtime = Runtime.for_options(options, device)
        self.processor = load_processor(source, WHAT)
        self.model = load_model(Florence2ForConditionalGeneration, source, WHAT, self.runtime)
        self.task = florence_task(options.length)
        self.batch_size = options.batch_size
        self.max_new_tokens = max_new_tokens(options.max_tokens, options.length)
        self.generation = {"max_new_tokens": self.max_new_tokens, "num_beams": BEAMS, "do_sample": False}

    def inputs(self, images: Sequence[Image.Image]):
        return self.processor(text=[self.task] * len(images), images=list(images), return_tensors="pt",
                              padding=True)

    def caption_batch(self, paths: Sequence[Path], images: Sequence[Image.Image]) -> list[str]:
        ids = generate(self.model, self.inputs(images), self.runtime, **self.generation)
        return [one_line(text) for text in self.processor.batch_decode(ids, skip_special_tokens=True)]

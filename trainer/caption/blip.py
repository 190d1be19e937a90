"""BLIP captions through transformers (BlipForConditionalGeneration + BlipProcessor), from a hub id or a local
folder. Beam search with minimum and maximum lengths, several images per batch, fp16 on CUDA."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .errors import CaptionError


class BlipCaptioner:
    needs_images = True

    def __init__(self, model: str, batch_size: int, beams: int, min_length: int, max_length: int,
                 device: str | None = None):
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # fp16 halves memory and time on a GPU; CPUs run it slowly or not at all.
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            self.processor = BlipProcessor.from_pretrained(model)
            self.model = BlipForConditionalGeneration.from_pretrained(model, dtype=self.dtype)
        except (OSError, ValueError) as error:
            raise CaptionError(f"could not load the BLIP model {model!r} (a hub id like "
                               f"Salesforce/blip-image-captioning-large, or a folder saved with "
                               f"save_pretrained): {error}") from None
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.generation = {"num_beams": beams, "min_length": min_length, "max_length": max_length}

    def caption_batch(self, paths: Sequence[Path], images: Sequence[Image.Image]) -> list[str]:
        import torch

        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            token_ids = self.model.generate(pixel_values=pixels.to(self.device, self.dtype), **self.generation)
        return [text.strip() for text in self.processor.batch_decode(token_ids, skip_special_tokens=True)]

"""Captions from chat vision-language models through transformers: JoyCaption (a LLaVA model:
LlavaForConditionalGeneration) and Qwen2-VL / Qwen2.5-VL / Qwen3-VL (AutoModelForImageTextToText picks the class
from the model's config). The model's own chat template turns the instruction (trainer/caption/prompts.py) into
its prompt; prompts are padded on the left so a batch generates together; greedy decoding, so the same image
gets the same caption."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import CaptionError
from .model_source import resolve_model_source
from .options import CaptionOptions
from .prompts import instruction, max_new_tokens
from .text import one_line
from .vlm import Runtime, generate, load_model, load_processor

# Qwen-VL makes a token of every 28 x 28 px: a 4000 px photo would be ~20,000 tokens. A caption needs no more
# than this many pixels on the long side (LLaVA-type models resize to their fixed input anyway).
MAX_SIDE = 1024


@dataclass(frozen=True)
class Family:
    what: str
    model_class: str  # a transformers class name
    system: str | None  # JoyCaption was trained with this system message
    image_in_template: bool  # True: the template places the image itself (JoyCaption); False: an image part


FAMILIES = {
    "joycaption": Family("JoyCaption", "LlavaForConditionalGeneration", "You are a helpful image captioner.", True),
    "qwen-vl": Family("Qwen-VL", "AutoModelForImageTextToText", None, False),
}


class ChatCaptioner:
    needs_images = True

    def __init__(self, options: CaptionOptions, device: str | None = None):
        self.family = FAMILIES[options.method]
        source = resolve_model_source(options.model_or_default, self.family.what)  # before anything heavy
        import transformers

        self.runtime = Runtime.for_options(options, device)
        self.processor = load_processor(source, self.family.what)
        self.processor.tokenizer.padding_side = "left"  # generation continues every row from its end
        self.model = load_model(getattr(transformers, self.family.model_class), source, self.family.what,
                                self.runtime)
        self.instruction = instruction(options.style, options.length, options.template, options.prompt)
        self.prompt = self.prompt_text()
        self.batch_size = options.batch_size
        self.max_new_tokens = max_new_tokens(options.max_tokens, options.length)

    def prompt_text(self) -> str:
        """The instruction through the model's chat template, ready for the processor (which expands the image
        placeholder to the image's tokens)."""
        if self.family.image_in_template:
            user = {"role": "user", "content": self.instruction}
        else:
            user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.instruction}]}
        conversation = ([{"role": "system", "content": self.family.system}] if self.family.system else []) + [user]
        text = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        if self.processor.image_token not in text:
            raise CaptionError(f"the {self.family.what} model's chat template does not place the image "
                               f"({self.processor.image_token}) in the prompt; is it a vision-language model?")
        return text

    def inputs(self, images: Sequence[Image.Image]):
        return self.processor(text=[self.prompt] * len(images), images=[shrink(image) for image in images],
                              return_tensors="pt", padding=True)

    def caption_batch(self, paths: Sequence[Path], images: Sequence[Image.Image]) -> list[str]:
        inputs = self.inputs(images)
        ids = generate(self.model, inputs, self.runtime, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1]:]  # the answer only, not the prompt
        return [one_line(text) for text in self.processor.batch_decode(new, skip_special_tokens=True)]


def shrink(image: Image.Image) -> Image.Image:
    if max(image.size) <= MAX_SIDE:
        return image
    smaller = image.copy()
    smaller.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return smaller

"""Every captioning option in one dataclass. The command-line flags, the [caption] table of a caption job file
and the UI all use these field names, so an option is added in one place."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CaptionError
from .prompts import LENGTHS, STYLES, TEMPLATES

METHODS = ("basic", "blip", "wd14", "florence2", "joycaption", "qwen-vl")
# The vision-language captioners (natural language, optionally guided); the last two take an instruction.
VLM_METHODS = ("florence2", "joycaption", "qwen-vl")
CHAT_METHODS = ("joycaption", "qwen-vl")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
QUANTIZE = ("none", "8bit", "4bit")
# How a new caption meets an existing one: keep the old one, replace it, or add the new text after it.
MODES = ("skip-existing", "overwrite", "append")
NAME_SOURCES = ("none", "file", "folder")
DEFAULT_MODELS = {
    "blip": "Salesforce/blip-image-captioning-large",
    "wd14": "SmilingWolf/wd-v1-4-convnext-tagger-v2",
    "florence2": "florence-community/Florence-2-large",
    "joycaption": "fancyfeast/llama-joycaption-beta-one-hf-llava",
    "qwen-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
}


@dataclass
class CaptionOptions:
    dir: str
    method: str | None = None  # None: no captioning (with report=True, only the tag report)
    mode: str = "skip-existing"
    extension: str = ".txt"
    only: str = ""  # caption just this image (its path relative to dir): "regenerate this one"
    # Edits: applied to every caption the run writes or keeps (see docs/captioning.md).
    prefix: str = ""
    suffix: str = ""
    find: str = ""
    replace: str = ""
    clean: bool = False
    replace_underscores: bool = False
    edit_kept: bool = False  # also edit captions that skip-existing keeps (an edit-only run always edits them)
    trigger: str = ""  # the trigger word: first, or in place of a phrase of trigger_replaces
    trigger_replaces: str = ""  # comma-separated phrases; the trigger replaces the first mention
    drop: str = ""  # comma-separated phrases removed ("a photo of, The image shows")
    # basic
    text: str = ""
    from_name: str = "none"
    # blip and wd14
    model: str = ""  # hub id or local folder; "" means DEFAULT_MODELS[method]
    batch_size: int = 4
    # blip
    beams: int = 3
    min_length: int = 5
    max_length: int = 75
    # wd14
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    exclude_tags: str = ""
    rating: bool = False
    # florence2, joycaption and qwen-vl
    length: str = "medium"
    max_tokens: int = 0  # new tokens at most; 0: by length
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp16; fp32 on the CPU
    quantize: str = "none"  # 8bit / 4bit through bitsandbytes (CUDA only), for the large models
    # joycaption and qwen-vl
    style: str = "natural"
    template: str = "describe"
    prompt: str = ""  # an instruction of your own instead of length/style/template
    # after captioning (or alone): print how many images carry each tag
    report: bool = False

    @property
    def model_or_default(self) -> str:
        return self.model or DEFAULT_MODELS.get(self.method or "", "")

    @property
    def caption_extension(self) -> str:
        return self.extension if self.extension.startswith(".") else "." + self.extension

    @property
    def has_edits(self) -> bool:
        return bool(self.prefix or self.suffix or self.find or self.clean or self.replace_underscores
                    or self.trigger or self.drop)

    def validate(self) -> None:
        """Raise CaptionError naming the first option that is not allowed."""
        _check_choice("method", self.method, METHODS, allow_none=True)
        _check_choice("mode", self.mode, MODES)
        _check_choice("from_name", self.from_name, NAME_SOURCES)
        _check_choice("length", self.length, LENGTHS)
        _check_choice("style", self.style, STYLES)
        _check_choice("template", self.template, tuple(TEMPLATES))
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("quantize", self.quantize, QUANTIZE)
        if not self.dir:
            raise CaptionError("no dataset folder given (DIR, or dir in the job's [caption] table)")
        if not Path(self.dir).expanduser().is_dir():
            raise CaptionError(f"dataset folder {self.dir} does not exist or is not a folder")
        if self.method is None and not self.report:
            raise CaptionError(f"say what to do: --method {'|'.join(METHODS)}, or --report")
        if self.replace and not self.find:
            raise CaptionError(f"--replace {self.replace!r} needs --find TEXT (the text to replace)")
        if self.extension.strip(".") == "" or "/" in self.extension:
            raise CaptionError(f"--extension {self.extension!r} is not a file extension (like .txt)")
        if self.method == "basic" and self.text and self.from_name != "none":
            raise CaptionError("--text and --from-name both give the caption; use one")
        if self.method == "basic" and not (self.text or self.from_name != "none" or self.has_edits):
            raise CaptionError("--method basic needs something to do: --text, --from-name, or an edit (--prefix, "
                               "--suffix, --find, --clean, --replace-underscores, --trigger, --drop)")
        if self.method == "florence2" and (self.style != "natural" or self.prompt or self.template != "describe"):
            raise CaptionError("--method florence2 writes natural language from its task token only (--length); "
                               "--style, --template and --prompt are for joycaption and qwen-vl (tags: wd14)")
        if self.trigger_replaces and not self.trigger:
            raise CaptionError(f"--trigger-replaces {self.trigger_replaces!r} needs --trigger WORD")
        _check_at_least("batch_size", self.batch_size, 1)
        _check_at_least("beams", self.beams, 1)
        _check_at_least("min_length", self.min_length, 0)
        _check_at_least("max_length", self.max_length, max(1, self.min_length))
        _check_at_least("max_tokens", self.max_tokens, 0)
        for name in ("general_threshold", "character_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise CaptionError(f"{_flag(name)} = {value} is not allowed; expected a number from 0 to 1")


def options_from_mapping(values: dict[str, Any], source: str) -> CaptionOptions:
    """CaptionOptions from a dict such as a job file's [caption] table; unknown keys and wrong types are errors
    that name `source`."""
    fields = {field.name: field for field in dataclasses.fields(CaptionOptions)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CaptionError(f"{source}: unknown caption option(s) {', '.join(unknown)}; "
                           f"known: {', '.join(fields)}")
    defaults = CaptionOptions(dir="")
    for name, value in values.items():
        expected = type(getattr(defaults, name))
        if name == "method" or value is None:
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise CaptionError(f"{source}: caption.{name} = {value!r} should be a {expected.__name__}")
    return CaptionOptions(**{"dir": "", **values})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_choice(name: str, value: str | None, allowed: tuple[str, ...], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in allowed:
        raise CaptionError(f"{_flag(name)} = {value!r} is not allowed; expected one of {', '.join(allowed)}")


def _check_at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise CaptionError(f"{_flag(name)} = {value} is not allowed; expected at least {minimum}")

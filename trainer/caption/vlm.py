"""What the transformers vision-language captioners share: device and precision, optional 4-/8-bit loading
(bitsandbytes), loading a model or processor with a one-line error, and generating in batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import CaptionError
from .options import CaptionOptions


@dataclass(frozen=True)
class Runtime:
    device: str
    dtype: Any  # torch.dtype
    quantize: str  # "none", "8bit" or "4bit"

    @classmethod
    def for_options(cls, options: CaptionOptions, device: str | None = None) -> "Runtime":
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = device.startswith("cuda")
        if options.quantize != "none" and not on_gpu:
            raise CaptionError(f"--quantize {options.quantize} needs a CUDA GPU (bitsandbytes' quantized layers); "
                               "this machine has none: use --quantize none")
        if options.precision == "auto":
            # bf16 keeps the LLMs' range (they were trained in it); older GPUs lack it and get fp16; CPUs fp32.
            dtype = ((torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if on_gpu
                     else torch.float32)
        else:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[options.precision]
        return cls(device, dtype, options.quantize)

    def load_kwargs(self) -> dict[str, Any]:
        """from_pretrained keywords: the dtype, and for a quantized model its config and the device to load
        onto (bitsandbytes places the weights while loading; such a model cannot be moved afterwards)."""
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        config = quantization_config(self.quantize, self.dtype)
        if config is not None:
            kwargs.update(quantization_config=config, device_map={"": self.device})
        return kwargs


def quantization_config(quantize: str, compute_dtype: Any):
    """transformers' BitsAndBytesConfig for "8bit" or "4bit" (NF4 with double quantisation, the usual choice
    for LLMs), None for "none"."""
    if quantize == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_model(model_class: Any, source: str, what: str, runtime: Runtime):
    try:
        model = model_class.from_pretrained(source, **runtime.load_kwargs())
    except (OSError, ValueError, ImportError) as error:
        raise CaptionError(f"could not load the {what} model {source!r}: {_first_line(error)}") from None
    if runtime.quantize == "none":
        model.to(runtime.device)
    return model.eval()


def load_processor(source: str, what: str):
    """The model's processor (image processor + tokenizer + chat template)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source)
    except ImportError:
        # Qwen-VL's processor also builds a video processor, which needs torchvision (kept out of Kiln: its
        # wheels clash with the CPU torch). Captions need only images: build it from its parts, without video.
        return _images_only_processor(source, what)
    except (OSError, ValueError) as error:
        raise CaptionError(f"could not load the {what} processor of {source!r}: {_first_line(error)}") from None


def _images_only_processor(source: str, what: str):
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    try:
        model_type = AutoConfig.from_pretrained(source).model_type
        processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES[model_type])
        tokenizer = AutoTokenizer.from_pretrained(source)
        image_processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise CaptionError(f"could not load the {what} processor of {source!r}: {_first_line(error)}") from None

    class ImagesOnly(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImagesOnly(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                      chat_template=tokenizer.chat_template or _chat_template_file(source))


def _chat_template_file(source: str) -> str | None:
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
        if path:
            text = open(path, encoding="utf-8").read()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def generate(model: Any, inputs: Any, runtime: Runtime, **settings: Any):
    """model.generate on the inputs moved to the model's device (pixels in its dtype), without gradients."""
    import torch

    moved = {name: (value.to(runtime.device, runtime.dtype) if value.is_floating_point()
                    else value.to(runtime.device)) for name, value in inputs.items() if torch.is_tensor(value)}
    with torch.inference_mode():
        return model.generate(**moved, **settings)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

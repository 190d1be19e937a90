"""training.t5_quantization = "fp8" | "int8" | "nf4": the frozen T5-XXL text encoder of SD 3, Flux.1 and Chroma
stored quantized. It matters while caption embeddings are cached, when T5 (4.7 G parameters) is alone on the GPU
and is the run's peak on small cards (trainer/memory.py).

Which layers: the linear layers, except the ones transformers keeps in fp32 (T5's `_keep_in_fp32_modules`, the
feed-forward output `wo`): diffusers' enable_layerwise_casting leaves those out of fp8, and transformers'
bitsandbytes loader leaves them out of int8/nf4. T5's feed-forward also casts its input to `wo.weight`'s dtype
before calling it, so an fp8 or 4-bit `wo` would feed it fp8 or uint8 activations. The embedding and the norms
stay too (sd-scripts keeps them in the training dtype as well).

What it does: the cached caption embeddings differ slightly from the full-precision encoder's, and the LoRA
learns against those (tests/test_t5_quantization.py bounds the difference on a tiny T5)."""
from __future__ import annotations

import torch
from diffusers.hooks import apply_layerwise_casting
from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

from .fp8 import STORAGE
from .quantize import quantize_linear_layers


def is_t5(encoder) -> bool:
    from transformers import T5EncoderModel

    return isinstance(encoder, T5EncoderModel)


def kept_layers(encoder) -> tuple[str, ...]:
    """The layer names the library keeps in full precision (T5: ("wo",))."""
    return tuple(getattr(encoder, "_keep_in_fp32_modules", None) or ())


def quantize_t5(encoder, kind: str, compute_dtype: torch.dtype) -> int:
    """Store `encoder`'s linear layers (but the kept ones) in `kind`, on the host where it is (the caching phase
    moves it to the GPU, then parks it). The parameters stored quantized."""
    keep = kept_layers(encoder)
    if kind == "fp8":
        # the library's own hook (cast up before each layer's forward, back after) is right here: T5 is frozen
        # and runs without a graph, unlike the denoiser (trainer/fp8.py hand-writes a fresh-copy hook for it)
        pattern = tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(rf"(^|\.){name}$" for name in keep)
        apply_layerwise_casting(encoder, storage_dtype=STORAGE, compute_dtype=compute_dtype,
                                skip_modules_pattern=pattern, skip_modules_classes=(torch.nn.Embedding,))
        return sum(p.numel() for p in encoder.parameters() if p.dtype == STORAGE)
    return quantize_linear_layers(encoder, "cpu", kind, compute_dtype, keep=keep)


def quantize_text_encoders(model, kind: str, compute_dtype: torch.dtype) -> int:
    """The model's T5 encoder (if it has one loaded) quantized; the parameters stored quantized."""
    return sum(quantize_t5(te, kind, compute_dtype) for te in model.text_encoders if te is not None and is_t5(te))

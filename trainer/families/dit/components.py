"""The text encoders and VAE of the transformer families, read from the files people keep: inside an
all-in-one checkpoint (ComfyUI's and Stability's `text_encoders.clip_l.transformer.*`, `first_stage_model.*`)
or as separate files (`clip_l.safetensors`, `clip_g.safetensors`, `t5xxl_fp16.safetensors` /
`t5xxl_fp8_e4m3fn.safetensors` in the transformers layout, BFL's `ae.safetensors` in the original VAE layout)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import PreTrainedModel

from ...models.errors import ModelError

CLIP_CONTAINERS = ("text_model.",)
VAE_PREFIXES = ("first_stage_model.", "vae.")  # all-in-one files (Stability/ComfyUI), some community merges


def cast(model, dtype: torch.dtype):
    """`model` in `dtype` (a no-op cast still makes diffusers warn). Judged by its first floating tensor: an
    int8 / nf4 base quantized as it was read starts with quantized bytes, which no cast changes."""
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    return model if first is None or first.dtype == dtype else model.to(dtype)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def text_encoder_from_state_dict(model: PreTrainedModel, state_dict: Mapping[str, torch.Tensor], source: str,
                                 dtype: torch.dtype) -> PreTrainedModel:
    """Fill a text encoder built from its config with weights in the transformers layout. Files keep CLIP
    under `text_model.`, which transformers 5's CLIPTextModel no longer has; fp8 files are upcast to `dtype`."""
    expected = model.state_dict()
    weights = dict(state_dict)
    if not any(k.startswith("text_model.") for k in expected):
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    if "shared.weight" in expected and "shared.weight" not in weights and "encoder.embed_tokens.weight" in weights:
        weights["shared.weight"] = weights["encoder.embed_tokens.weight"]  # T5 ties them; some files keep one
    usable = {k: v.to(dtype) for k, v in weights.items() if k in expected}
    optional = ("position_ids", "encoder.embed_tokens.weight")  # a buffer, and T5's tied copy of shared
    missing = sorted(k for k in expected if k not in usable and not k.endswith(optional))
    if missing:
        raise ModelError(f"{source} does not hold a complete {type(model).__name__} (missing {missing[:3]}...)")
    wrong = [k for k, v in usable.items() if v.shape != expected[k].shape]
    if wrong:
        raise ModelError(f"{source}: {wrong[0]} is {tuple(usable[wrong[0]].shape)}, expected "
                         f"{tuple(expected[wrong[0]].shape)}: a text encoder of another size than this model's")
    model.load_state_dict(usable, strict=False)
    return cast(model, dtype)


def vae_from_state_dict(state_dict: Mapping[str, torch.Tensor], config_dir: Path, source: str,
                        dtype: torch.dtype) -> AutoencoderKL:
    """A VAE in the diffusers layout or the original one (BFL's ae.safetensors, or under an all-in-one prefix)."""
    try:
        if any(k.startswith("encoder.down_blocks.") for k in state_dict):
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir, subfolder="vae"))
            vae.load_state_dict(dict(state_dict), strict=True)
            return cast(vae, dtype)
        weights = dict(state_dict)
        for prefix in VAE_PREFIXES:
            if any(k.startswith(prefix) for k in weights):
                weights = strip_prefix(weights, prefix)
        return AutoencoderKL.from_single_file(weights, config=str(config_dir), subfolder="vae",
                                              local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot load the VAE from {source}: {e}") from e

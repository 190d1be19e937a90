"""Writing trained LoRAs: the Kohya-format .safetensors every UI loads, and an optional diffusers-format copy."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline
from peft import get_peft_model_state_dict

from ..atomic import write_atomically
from ..families import DEFAULT_FAMILY, family
from .hashes import addnet_hashes
from .kohya_keys import TEXT_ENCODER_PREFIXES, lora_module_alphas, text_encoder_lora_to_kohya, unet_lora_to_kohya
from .metadata import LoraExportInfo, build_lora_metadata

SAVE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def kohya_lora_tensors(
    unet: torch.nn.Module | None = None,
    text_encoders: Sequence[torch.nn.Module | None] = (),
    arch: str = DEFAULT_FAMILY.id,
    unet_module_names: Mapping[str, str] | None = None,
    adapter_name: str = "default",
) -> dict[str, torch.Tensor]:
    """All Kohya-format LoRA tensors of the given modules, in their training dtype.

    `text_encoders` are in pipeline order (SDXL: both); an entry that is None or has no LoRA layers was not
    trained and is skipped. SDXL needs `unet_module_names` (diffusers -> original UNet module names).
    """
    if arch not in TEXT_ENCODER_PREFIXES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(TEXT_ENCODER_PREFIXES)}")
    prefixes = TEXT_ENCODER_PREFIXES[arch]
    if len(text_encoders) > len(prefixes):
        raise ValueError(f"{arch} has {len(prefixes)} text encoder(s), got {len(text_encoders)}")
    tensors: dict[str, torch.Tensor] = {}
    if unet is not None and lora_module_alphas(unet, adapter_name):
        if family(arch).kohya_original_names and unet_module_names is None:
            raise ValueError(f"{family(arch).label} LoRA keys use the original UNet module names: pass "
                             "unet_module_names")
        tensors.update(unet_lora_to_kohya(unet, unet_module_names, adapter_name))
    for prefix, text_encoder in zip(prefixes, text_encoders):
        if text_encoder is not None and lora_module_alphas(text_encoder, adapter_name):
            tensors.update(text_encoder_lora_to_kohya(text_encoder, prefix, adapter_name))
    if not tensors:
        raise ValueError(f"nothing to save: no LoRA layers for adapter {adapter_name!r} in the given modules")
    return tensors


def save_lora(
    path: str | os.PathLike,
    *,
    unet: torch.nn.Module | None = None,
    text_encoders: Sequence[torch.nn.Module | None] = (),
    arch: str = DEFAULT_FAMILY.id,
    info: LoraExportInfo,
    dtype: torch.dtype = torch.float16,
    unet_module_names: Mapping[str, str] | None = None,
    adapter_name: str = "default",
) -> Path:
    """Write the LoRA of `unet` / `text_encoders` to `path` as a Kohya .safetensors with ss_*, sshs_* and
    modelspec metadata, cast to `dtype`. Atomic: `path` holds the old file or the complete new one.

    Pass the bare modules (after accelerator.unwrap_model), so module names carry no wrapper prefix.
    """
    _check_save_dtype(dtype)
    tensors = {key: tensor.detach().to("cpu", dtype).contiguous()
               for key, tensor in kohya_lora_tensors(unet, text_encoders, arch, unet_module_names,
                                                     adapter_name).items()}
    metadata = build_lora_metadata(info, arch)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = addnet_hashes(tensors, metadata)
    return write_atomically(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))


def save_lora_diffusers(
    folder: str | os.PathLike,
    *,
    unet: torch.nn.Module | None = None,
    text_encoder: torch.nn.Module | None = None,
    dtype: torch.dtype = torch.float16,
    adapter_name: str = "default",
    weight_name: str = DIFFUSERS_WEIGHT_NAME,
) -> Path:
    """Write an SD 1.x/2.x LoRA in diffusers' own format into `folder` (for `load_lora_weights(folder)`);
    returns the file's path. Each model's LoraConfig goes in as adapter metadata: without it diffusers
    reloads with alpha = rank and the outputs change whenever alpha != rank."""
    _check_save_dtype(dtype)
    layers, adapter_metadata = {}, {}
    for name, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is not None and lora_module_alphas(model, adapter_name):
            layers[name] = {key: tensor.detach().to("cpu", dtype).contiguous()
                            for key, tensor in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
            adapter_metadata[name] = model.peft_config[adapter_name].to_dict()
    if not layers:
        raise ValueError(f"nothing to save: no LoRA layers for adapter {adapter_name!r} in the given modules")

    def write(tmp: Path) -> None:
        StableDiffusionPipeline.save_lora_weights(
            tmp.parent, weight_name=tmp.name,
            unet_lora_layers=layers.get("unet"), text_encoder_lora_layers=layers.get("text_encoder"),
            unet_lora_adapter_metadata=adapter_metadata.get("unet"),
            text_encoder_lora_adapter_metadata=adapter_metadata.get("text_encoder"))

    return write_atomically(Path(folder) / weight_name, write)


def _check_save_dtype(dtype: torch.dtype) -> None:
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"cannot save a LoRA as {dtype}; expected one of {', '.join(map(str, SAVE_DTYPES))}")

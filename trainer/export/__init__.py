"""Exporting trained LoRAs: Kohya-format .safetensors with ss_*/modelspec metadata, plus a diffusers copy."""
from .hashes import addnet_hashes
from .kohya_keys import (TEXT_ENCODER_PREFIXES, UNET_PREFIX, lora_module_alphas, peft_to_kohya,
                         text_encoder_lora_to_kohya, unet_lora_to_kohya)
from .lora_file import SAVE_DTYPES, kohya_lora_tensors, save_lora, save_lora_diffusers
from .metadata import LoraExportInfo, build_lora_metadata, build_modelspec_metadata, modelspec_architecture

__all__ = [
    "LoraExportInfo", "SAVE_DTYPES", "TEXT_ENCODER_PREFIXES", "UNET_PREFIX", "addnet_hashes",
    "build_lora_metadata", "build_modelspec_metadata", "kohya_lora_tensors", "lora_module_alphas",
    "modelspec_architecture", "peft_to_kohya", "save_lora", "save_lora_diffusers", "text_encoder_lora_to_kohya",
    "unet_lora_to_kohya",
]

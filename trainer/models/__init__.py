"""Base-model loading: diffusers folders, original single files, hub ids and built-in tiny models; architecture
detection; the single-file writer; tiny random models."""
from .arch import detect_arch_from_keys, detect_arch_from_unet_config
from .errors import ModelError
from .loading import BUILTIN_MODELS, BaseModel, load_base_model
from .single_file import unet_module_names, write_single_file
from .tiny import TINY_NOTICE, make_tiny_sd15, make_tiny_sd2, make_tiny_sdxl, save_tiny_model

__all__ = ["BUILTIN_MODELS", "BaseModel", "ModelError", "TINY_NOTICE", "detect_arch_from_keys",
           "detect_arch_from_unet_config", "load_base_model", "make_tiny_sd15", "make_tiny_sd2", "make_tiny_sdxl",
           "save_tiny_model", "unet_module_names", "write_single_file"]

"""Which Stable Diffusion architecture a checkpoint is: from an original-layout state dict's key names, or from
a diffusers UNet config."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ModelError

ARCH_NAMES = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_EXPECTED_KEYS = ("expected an original-layout Stable Diffusion checkpoint: UNet weights under 'model.diffusion_model.' "
                  "and a text encoder under 'cond_stage_model.transformer.' (SD 1.x), 'cond_stage_model.model.' "
                  "(SD 2.x) or 'conditioner.embedders.' (SDXL)")


def _has_prefix(keys: set[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def detect_arch_from_keys(keys: Iterable[str], source: str) -> str:
    """"sd15", "sd2" or "sdxl" from the key names of an original single-file checkpoint; `source` names the file
    in the error raised for anything else."""
    keys = set(keys)
    if not _has_prefix(keys, "model.diffusion_model."):
        if _has_prefix(keys, "lora_") or any(".lora_" in k for k in keys):
            raise ModelError(f"{source} is a LoRA, not a base model; {_EXPECTED_KEYS}")
        sample = ", ".join(sorted(keys)[:3]) or "no tensors at all"
        raise ModelError(f"{source} is not a Stable Diffusion model ({sample}, ...); {_EXPECTED_KEYS}")
    if _has_prefix(keys, "conditioner.embedders."):
        if not _has_prefix(keys, "conditioner.embedders.1."):
            raise ModelError(f"{source} looks like the SDXL refiner (one OpenCLIP text encoder); Kiln trains the "
                             "SDXL base model, which has two text encoders")
        return "sdxl"
    if _has_prefix(keys, "cond_stage_model.model."):
        return "sd2"
    if _has_prefix(keys, "cond_stage_model.transformer."):
        return "sd15"
    raise ModelError(f"{source} has a UNet but no text encoder Kiln knows; {_EXPECTED_KEYS}")


def detect_arch_from_unet_config(unet_config: Mapping[str, Any], source: str,
                                 text_encoder_config: Mapping[str, Any] | None = None) -> str:
    """"sd15", "sd2" or "sdxl" from a diffusers UNet config: SDXL has the text_time embedding; SD 1.x attends to
    768-wide CLIP-L embeddings, SD 2.x to 1024-wide OpenCLIP-H ones. Models of other widths (tiny ones) are told
    apart by their text encoder's activation: OpenAI CLIP uses quick_gelu, OpenCLIP plain gelu."""
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    cross_attention_dim = unet_config.get("cross_attention_dim")
    by_width = {768: "sd15", 1024: "sd2"}
    if cross_attention_dim in by_width:
        return by_width[cross_attention_dim]
    by_activation = {"quick_gelu": "sd15", "gelu": "sd2"}
    activation = (text_encoder_config or {}).get("hidden_act")
    if activation in by_activation:
        return by_activation[activation]
    raise ModelError(f"{source}: cannot tell the architecture from the UNet config (cross_attention_dim="
                     f"{cross_attention_dim!r}; expected 768 for SD 1.x, 1024 for SD 2.x, or addition_embed_type "
                     "'text_time' for SDXL); set [model] arch explicitly")


def detect_arch_of_source(base: str) -> str:
    """The arch of a model source without loading weights (for `trainer check`): builtin ids by name, single
    files from their tensor names, diffusers folders from their configs. Hub ids raise ModelError."""
    import json
    from pathlib import Path

    from .loading import BUILTIN_MODELS

    if base in BUILTIN_MODELS:
        return BUILTIN_MODELS[base]
    path = Path(base).expanduser()
    if path.is_dir():
        read = lambda name: json.loads((path / name / "config.json").read_text()) if (path / name).is_dir() else {}
        return detect_arch_from_unet_config(read("unet"), str(path), read("text_encoder"))
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return detect_arch_from_keys(f.keys(), str(path))
    raise ModelError(f"{base}: the architecture is known only once the model is loaded")

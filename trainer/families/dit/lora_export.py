"""Writing a transformer family's trained LoRA: the Kohya layout ComfyUI, Forge and sd-scripts share
(original module names, fused where the original fuses), or diffusers' own layout as an option."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import safetensors.torch
import torch
from peft import get_peft_model_state_dict

from ...atomic import write_atomically
from ...export.hashes import addnet_hashes
from ...export.kohya_keys import lora_module_alphas, text_encoder_lora_to_kohya
from .fused_lora import kohya_tensors
from .keymap import ModuleRow

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def kohya_lora_tensors(transformer: torch.nn.Module | None, rows: Iterable[ModuleRow],
                       text_encoders: Sequence[tuple[torch.nn.Module | None, str]] = (),
                       adapter: str = "default") -> dict[str, torch.Tensor]:
    """`lora_unet_<original module>` tensors of the transformer's LoRA plus `lora_te1_…` / `lora_te2_…` of each
    (encoder, prefix) that trained one. Encoders without LoRA layers (T5 never has one) are skipped."""
    tensors: dict[str, torch.Tensor] = {}
    if transformer is not None and lora_module_alphas(transformer, adapter):
        tensors.update(kohya_tensors(transformer, rows, adapter=adapter))
    for encoder, prefix in text_encoders:
        if encoder is not None and lora_module_alphas(encoder, adapter):
            tensors.update(text_encoder_lora_to_kohya(encoder, prefix, adapter))
    if not tensors:
        raise ValueError(f"nothing to save: no LoRA layers for adapter {adapter!r}")
    return tensors


def save_kohya(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
               dtype: torch.dtype = torch.float16) -> Path:
    """One .safetensors, cast to `dtype` (alphas too: readers take them as floats), atomically."""
    cast = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
    meta = dict(metadata)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = addnet_hashes(cast, meta)
    return write_atomically(Path(path), lambda tmp: safetensors.torch.save_file(cast, tmp, metadata=meta))


def save_diffusers(folder: Path, pipeline_class: type, models: Mapping[str, torch.nn.Module | None],
                   dtype: torch.dtype = torch.float16, adapter: str = "default") -> Path:
    """diffusers' layout (`transformer.<module>.lora_A.weight`, …) through the pipeline's save_lora_weights,
    each model's LoraConfig as adapter metadata (without it diffusers reloads with alpha = rank).
    `models` maps "transformer" / "text_encoder" / "text_encoder_2" to the trained modules."""
    layers, configs = {}, {}
    for name, model in models.items():
        if model is not None and lora_module_alphas(model, adapter):
            layers[f"{name}_lora_layers"] = {k: v.detach().to("cpu", dtype).contiguous()
                                             for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items()}
            configs[f"{name}_lora_adapter_metadata"] = model.peft_config[adapter].to_dict()
    if not layers:
        raise ValueError(f"nothing to save: no LoRA layers for adapter {adapter!r}")

    def write(tmp: Path) -> None:
        pipeline_class.save_lora_weights(tmp.parent, weight_name=tmp.name, **layers, **configs)

    return write_atomically(Path(folder) / DIFFUSERS_WEIGHT_NAME, write)

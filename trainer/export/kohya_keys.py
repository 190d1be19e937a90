"""peft LoRA state dicts -> Kohya LoRA keys, the format A1111, ComfyUI, Civitai and diffusers all read.

Kohya names one LoRA module `<prefix>_<module path with "." as "_">` and stores three tensors under it:
`.lora_down.weight` (peft lora_A), `.lora_up.weight` (peft lora_B) and `.alpha` (a 0-dim tensor; the runtime
scale is alpha / rank). Conv LoRA keeps its conv shapes: down [r, in, k, k], up [out, r, 1, 1].
"""
from __future__ import annotations

from typing import Mapping

import torch
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer

UNET_PREFIX = "lora_unet"
# Text-encoder prefixes by architecture, in the order the pipeline holds its encoders.
TEXT_ENCODER_PREFIXES: dict[str, tuple[str, ...]] = {
    "sd15": ("lora_te",),
    "sd2": ("lora_te",),
    "sdxl": ("lora_te1", "lora_te2"),
}

_PEFT_SUFFIX_TO_KOHYA = {".lora_A.weight": "lora_down.weight", ".lora_B.weight": "lora_up.weight"}


def lora_module_alphas(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, float]:
    """The Kohya alpha of every LoRA module of `model`, by module name.

    Read from the layers rather than the LoraConfig so rank_pattern/alpha_pattern need no re-matching.
    Kohya scales by alpha / rank, so the alpha written is scaling * rank: the trained alpha for plain LoRA,
    and the equivalent alpha when peft scales differently (rsLoRA's alpha / sqrt(rank)).
    """
    alphas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.r:
            alphas[name] = module.scaling[adapter_name] * module.r[adapter_name]
    return alphas


def peft_to_kohya(
    peft_state_dict: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float],
    prefix: str,
    module_names: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Rename a peft LoRA state dict (adapter name already stripped) to Kohya keys and add each `.alpha`.

    `module_names` maps a module name to the name written instead (SDXL: diffusers -> original UNet names);
    every LoRA module must then be in it.
    """
    kohya: dict[str, torch.Tensor] = {}
    for key, tensor in peft_state_dict.items():
        suffix = next((s for s in _PEFT_SUFFIX_TO_KOHYA if key.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"cannot export {key!r} in Kohya LoRA format: only plain LoRA (lora_A/lora_B "
                             f"weights, no DoRA, no LoRA bias) is supported")
        module = key[: -len(suffix)]
        if module not in alphas:
            raise ValueError(f"no LoRA layer found for {key!r}: was the adapter added to this model?")
        if module_names is not None and module not in module_names:
            raise ValueError(f"no export name for LoRA module {module!r} in the module-name mapping")
        exported = module_names[module] if module_names is not None else module
        lora_name = f"{prefix}_{exported.replace('.', '_')}"
        kohya[f"{lora_name}.{_PEFT_SUFFIX_TO_KOHYA[suffix]}"] = tensor
        kohya[f"{lora_name}.alpha"] = torch.tensor(float(alphas[module]))
    return kohya


def unet_lora_to_kohya(
    unet: torch.nn.Module, module_names: Mapping[str, str] | None = None, adapter_name: str = "default"
) -> dict[str, torch.Tensor]:
    """Kohya tensors for the UNet's LoRA. SD 1.x/2.x keep the diffusers module names (as Kohya does);
    SDXL passes `module_names` mapping diffusers names to the original UNet's names."""
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return peft_to_kohya(state, lora_module_alphas(unet, adapter_name), UNET_PREFIX, module_names)


def text_encoder_lora_to_kohya(
    text_encoder: torch.nn.Module, prefix: str, adapter_name: str = "default"
) -> dict[str, torch.Tensor]:
    """Kohya tensors for one CLIP text encoder's LoRA under `prefix` (lora_te, lora_te1 or lora_te2)."""
    state = get_peft_model_state_dict(text_encoder, adapter_name=adapter_name)
    alphas = lora_module_alphas(text_encoder, adapter_name)
    module_names = None
    # transformers 5's CLIPTextModel dropped its `text_model` level (CLIPTextModelWithProjection still has it);
    # Kohya, A1111 and ComfyUI expect lora_te_text_model_encoder_..., so put the level back.
    if not hasattr(text_encoder, "text_model"):
        module_names = {name: f"text_model.{name}" for name in alphas}
    return peft_to_kohya(state, alphas, prefix, module_names)

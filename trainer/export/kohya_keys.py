"""peft LoRA state dicts -> Kohya LoRA keys, the format A1111, ComfyUI, Civitai and diffusers all read.

Kohya names one LoRA module `<prefix>_<module path with "." as "_">` and stores three tensors under it:
`.lora_down.weight` (peft lora_A), `.lora_up.weight` (peft lora_B) and `.alpha` (a 0-dim tensor; the runtime
scale is alpha / rank). Conv LoRA keeps its conv shapes: down [r, in, k, k], up [out, r, 1, 1].

The LyCORIS algorithms keep the same module names and `.alpha` with their own tensors, as ComfyUI
(comfy/weight_adapter) and A1111 (extensions-builtin/Lora) read them:
  LoHa  hada_w1_a [out, r], hada_w1_b [r, in*k*k], hada_w2_a, hada_w2_b:  delta = (w1a @ w1b) * (w2a @ w2b) * alpha/r
  LoKr  lokr_w1 [a, c] or lokr_w1_a @ lokr_w1_b, lokr_w2 [b, d(, k, k)] or lokr_w2_a @ lokr_w2_b:
        delta = kron(w1, w2) * alpha/r, where r is the inner size of a decomposed factor; with neither factor
        decomposed readers use a scale of 1
  DoRA  dora_scale [out, 1(, 1, 1)]: W' = dora_scale * (W + delta) / ||W + delta|| per output channel
"""
from __future__ import annotations

from typing import Mapping

import torch
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lycoris_utils import LycorisLayer

from ..families import FAMILIES

UNET_PREFIX = "lora_unet"
# Text-encoder prefixes by family, in the order the pipeline holds its encoders.
TEXT_ENCODER_PREFIXES: dict[str, tuple[str, ...]] = {f.id: f.kohya_text_prefixes for f in FAMILIES.values()}

_PEFT_SUFFIX_TO_KOHYA = {".lora_A.weight": "lora_down.weight", ".lora_B.weight": "lora_up.weight",
                         ".lora_magnitude_vector": "dora_scale",
                         **{f".{name}": name for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
                                                           "lokr_w1", "lokr_w1_a", "lokr_w1_b",
                                                           "lokr_w2", "lokr_w2_a", "lokr_w2_b")}}


def lora_module_alphas(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, float]:
    """The Kohya alpha of every LoRA module of `model`, by module name.

    Read from the layers rather than the LoraConfig so rank_pattern/alpha_pattern need no re-matching.
    Kohya scales by alpha / rank, so the alpha written is scaling * rank: the trained alpha for plain LoRA,
    and the equivalent alpha when peft scales differently (rsLoRA's alpha / sqrt(rank)).
    """
    return {name: module.scaling[adapter_name] * module.r[adapter_name]
            for name, module in adapter_layers(model, adapter_name).items()}


def module_ranks(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, int]:
    """The peft rank r of every adapter module of `model`, by module name."""
    return {name: module.r[adapter_name] for name, module in adapter_layers(model, adapter_name).items()}


def adapter_layers(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.nn.Module]:
    """Every peft LoRA/DoRA, LoHa or LoKr layer of `model` that holds `adapter_name`, by module name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, (LoraLayer, LycorisLayer)) and adapter_name in module.r}


def peft_to_kohya(
    peft_state_dict: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float],
    prefix: str,
    module_names: Mapping[str, str] | None = None,
    ranks: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Rename a peft LoRA state dict (adapter name already stripped) to Kohya keys and add each `.alpha`.
    `ranks` (module -> peft r) is needed only for LoKr layers with two full factors.

    `module_names` maps a module name to the name written instead (SDXL: diffusers -> original UNet names);
    every LoRA module must then be in it.
    """
    kohya: dict[str, torch.Tensor] = {}
    for key, tensor in peft_state_dict.items():
        suffix = next((s for s in _PEFT_SUFFIX_TO_KOHYA if key.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"cannot export {key!r} in Kohya/LyCORIS format: supported are LoRA (lora_A/lora_B, "
                             f"DoRA magnitudes), LoHa and LoKr without CP/Tucker tensors, and no LoRA bias")
        module = key[: -len(suffix)]
        if module not in alphas:
            raise ValueError(f"no LoRA layer found for {key!r}: was the adapter added to this model?")
        if module_names is not None and module not in module_names:
            raise ValueError(f"no export name for LoRA module {module!r} in the module-name mapping")
        exported = module_names[module] if module_names is not None else module
        lora_name = kohya_module_name(prefix, exported)
        if suffix == ".lora_magnitude_vector":
            tensor = _dora_scale_layout(tensor)
        elif suffix == ".lokr_w1" and f"{module}.lokr_w2" in peft_state_dict:
            # peft scales every LoKr by alpha / r, but readers scale one whose two factors are both full
            # matrices by 1 (there is no inner size to divide by): bake the scale into w1, keep the delta.
            tensor = tensor * (float(alphas[module]) / ranks[module])
        kohya[f"{lora_name}.{_PEFT_SUFFIX_TO_KOHYA[suffix]}"] = tensor
        kohya[f"{lora_name}.alpha"] = torch.tensor(float(alphas[module]))
    return kohya


def kohya_module_name(prefix: str, module_name: str) -> str:
    """lora_unet_down_blocks_0_..._to_q: the prefix, then the module path with "." as "_"."""
    return f"{prefix}_{module_name.replace('.', '_')}"


def _dora_scale_layout(magnitude: torch.Tensor) -> torch.Tensor:
    """peft keeps a Linear's magnitude as [out] and a conv's as [1, out, 1, 1]; LyCORIS' output-axis dora_scale
    is [out, 1, ...], and readers take the axis from that shape (dora_scale.shape[0] == out)."""
    if magnitude.dim() == 1:
        return magnitude.unsqueeze(1)
    return magnitude.transpose(0, 1)


def unet_lora_to_kohya(
    unet: torch.nn.Module, module_names: Mapping[str, str] | None = None, adapter_name: str = "default"
) -> dict[str, torch.Tensor]:
    """Kohya tensors for the UNet's LoRA. SD 1.x/2.x keep the diffusers module names (as Kohya does);
    SDXL passes `module_names` mapping diffusers names to the original UNet's names."""
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return peft_to_kohya(state, lora_module_alphas(unet, adapter_name), UNET_PREFIX, module_names,
                         module_ranks(unet, adapter_name))


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
    return peft_to_kohya(state, alphas, prefix, module_names, module_ranks(text_encoder, adapter_name))

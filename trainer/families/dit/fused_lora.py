"""LoRA export onto the original layout's fused weights, exactly.

diffusers splits some original Linear layers (Flux's and SD3's `qkv`, Flux's single-block `linear1` = q, k, v and
the MLP input). A LoRA trained on the parts (A_i [r_i, in], B_i [out_i, r_i], scale s_i = alpha_i / r_i) is the
fused layer's LoRA with the downs stacked and the ups block-diagonal:

    down = [A_1; A_2; ...]            [R = Σ r_i, in]
    up   = diag(B_1·s_1/s, B_2·s_2/s, ...)   [Σ out_i, R]     (zeros where a part did not train)
    alpha = s · R                     (readers scale by alpha / rank = s)

so up @ down · alpha / R puts s_i · B_i A_i in part i's rows and nothing elsewhere: the trained delta. This is
sd-scripts' layout for its split-qkv LoRA; ComfyUI and Forge read it as any LoRA of the fused layer, and
diffusers' Kohya-Flux reader recognises the zero blocks and splits it back.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from peft import get_peft_model_state_dict

from ...export.kohya_keys import UNET_PREFIX, adapter_layers, kohya_module_name
from .keymap import ModuleRow


def _lora_pairs(model: torch.nn.Module, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module: (A, B, scale)} of a model's plain-LoRA layers."""
    state = get_peft_model_state_dict(model, adapter_name=adapter)
    layers = adapter_layers(model, adapter)
    pairs = {}
    for name, layer in layers.items():
        keys = [k for k in state if k.startswith(name + ".")]
        if set(keys) != {f"{name}.lora_A.weight", f"{name}.lora_B.weight"}:
            raise ValueError(f"{name}: only plain LoRA (no DoRA, LoHa, LoKr) exports onto fused original layers; "
                             f"it holds {sorted(k[len(name) + 1:] for k in keys)}")
        pairs[name] = (state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"], float(layer.scaling[adapter]))
    return pairs


def kohya_tensors(model: torch.nn.Module, rows: Iterable[ModuleRow], prefix: str = UNET_PREFIX,
                  adapter: str = "default") -> dict[str, torch.Tensor]:
    """Kohya-layout tensors (`<prefix>_<original module>.lora_down.weight / .lora_up.weight / .alpha`) of the
    denoiser's LoRA, fused where the original layout fuses."""
    pairs = _lora_pairs(model, adapter)
    owner = {path: (r, i) for r in rows for i, (path, _) in enumerate(r.parts)}
    unplaced = sorted(set(pairs) - set(owner))
    if unplaced:
        raise ValueError(f"no original-layout name for LoRA module(s) {unplaced[:3]}")
    out: dict[str, torch.Tensor] = {}
    for r in {owner[name][0] for name in pairs}:
        trained = [(i, pairs[path]) for i, (path, _) in enumerate(r.parts) if path in pairs]
        name = kohya_module_name(prefix, r.original)
        if not r.fused:
            down, up, scale = trained[0][1]
        else:
            down, up, scale = _fuse(r, trained)
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(scale * down.shape[0])
    return out


def _fuse(r: ModuleRow, trained: list[tuple[int, tuple[torch.Tensor, torch.Tensor, float]]]):
    scale = trained[0][1][2]
    row_starts = [0]
    for _, rows in r.parts:
        row_starts.append(row_starts[-1] + rows)
    rank = sum(a.shape[0] for _, (a, _, _) in trained)
    first_b = trained[0][1][1]
    up = torch.zeros(row_starts[-1], rank, dtype=first_b.dtype, device=first_b.device)
    column = 0
    for i, (a, b, s) in trained:
        up[row_starts[i]:row_starts[i + 1], column:column + a.shape[0]] = b * (s / scale)
        column += a.shape[0]
    down = torch.cat([a for _, (a, _, _) in trained], dim=0)
    return down, up, scale


def trained_deltas(model: torch.nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Each LoRA module's weight delta as peft applies it: s · B @ A."""
    return {name: (b.double() @ a.double()) * s for name, (a, b, s) in _lora_pairs(model, adapter).items()}


def reader_deltas(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each Kohya module's delta as ComfyUI, Forge and A1111 compute it: up @ down · alpha / rank."""
    out = {}
    for key, down in tensors.items():
        if key.endswith(".lora_down.weight"):
            name = key[: -len(".lora_down.weight")]
            up, alpha = tensors[f"{name}.lora_up.weight"], float(tensors[f"{name}.alpha"])
            out[name] = (up.double() @ down.double()) * (alpha / down.shape[0])
    return out


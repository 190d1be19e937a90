"""Continuing from an existing LoRA file (lora.init_weights; Kohya: network_weights + dim_from_weights).

The file's Kohya/LyCORIS tensors are read back into the peft layers the job adds: each module's rank and
alpha come from the file (as rank_pattern/alpha_pattern), and every tensor is the inverse of what the export
writes (kohya_keys.py), so the first step starts exactly where the file's training stopped."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..export.kohya_keys import TEXT_ENCODER_PREFIXES, UNET_PREFIX, adapter_layers, kohya_module_name
from ..lora_tools.network import LORA, NetworkFile, read_network_file
from ..models.errors import ModelError


def read_initial_network(path: Path) -> NetworkFile:
    return read_network_file(path, "lora.init_weights")


def check_matches_job(network: NetworkFile, lora_cfg, arch: str, rank_default: int, alpha_default: float) -> None:
    """The file must be for this architecture and this job's network type; a rank/alpha the job sets must be the
    file's (a rank left at its default is read from the file)."""
    where = f"lora.init_weights = {network.path}"
    file_arch = network.arch
    if file_arch and arch and file_arch != arch:  # arch None: unknown until the model loads (a hub id)
        raise ModelError(f"{where} was trained for {file_arch}, but the base model is {arch}")
    wanted = LORA if lora_cfg.type in ("lora", "locon") else lora_cfg.type
    if network.algo != wanted:
        raise ModelError(f"{where} is a {network.algo} network but lora.type = {lora_cfg.type!r}: set lora.type to "
                         f"{'lora or locon' if network.algo == LORA else network.algo!r}")
    if network.dora != bool(lora_cfg.dora):
        raise ModelError(f"{where} {'has' if network.dora else 'has no'} DoRA magnitudes (dora_scale) but "
                         f"lora.dora = {str(bool(lora_cfg.dora)).lower()}: set it to {str(network.dora).lower()}")
    rank, alpha = network.typical()
    if rank is not None and lora_cfg.rank not in (rank, rank_default):
        raise ModelError(f"{where} has rank {rank} but lora.rank = {lora_cfg.rank}: remove lora.rank (it is then "
                         "read from the file) or set it to the file's")
    if lora_cfg.alpha not in (alpha, alpha_default):
        raise ModelError(f"{where} has alpha {alpha:g} but lora.alpha = {lora_cfg.alpha:g}: remove lora.alpha (it is "
                         "then read from the file) or set it to the file's")


def kohya_names(model, component: str, module_names=None) -> dict[str, str]:
    """Kohya module name -> diffusers module name, for every Linear/Conv2d of one component ("unet" or
    "text_encoder_<i>")."""
    if component == "unet":
        module, prefix = model.unet, UNET_PREFIX
    else:
        i = int(component.rsplit("_", 1)[1])
        module, prefix = model.text_encoders[i], TEXT_ENCODER_PREFIXES[model.arch][i]
    text_level = component != "unet" and not hasattr(module, "text_model")
    names = {}
    for name, sub in module.named_modules():
        if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)):
            exported = (module_names or {}).get(name, name) if component == "unet" else name
            names[kohya_module_name(prefix, f"text_model.{exported}" if text_level else exported)] = name
    return names


def rank_and_alpha_patterns(network: NetworkFile, names: dict[str, str]) -> tuple[dict, dict]:
    """peft rank_pattern / alpha_pattern that give every module of this component the file's rank and alpha.
    peft matches a pattern against the end of a module name, so each full name is anchored by escaping it."""
    ranks, alphas = {}, {}
    for kohya, name in names.items():
        if kohya in network.modules:
            key = "^" + re.escape(name) + "$"
            if network.rank(kohya) is not None:
                ranks[key] = network.rank(kohya)
            alphas[key] = network.alpha(kohya)
    return ranks, alphas


def load_into(network: NetworkFile, module: torch.nn.Module, names: dict[str, str], component: str) -> set[str]:
    """Copy the file's tensors into the peft layers of `module`; return the Kohya names used. A layer the file
    lacks, or a file module the job has no layer for, is an error naming both."""
    layers = adapter_layers(module)
    by_kohya = {kohya: name for kohya, name in names.items() if name in layers}
    missing = sorted(set(by_kohya) - set(network.modules))
    if missing:
        raise ModelError(f"lora.init_weights = {network.path} has no weights for {len(missing)} layer(s) this job "
                         f"trains in the {component}, e.g. {missing[0]}: match lora.train_ff, lora.train_conv / "
                         "lora.type and the text-encoder setting to the run that made the file")
    with torch.no_grad():
        for kohya, name in by_kohya.items():
            _copy_module(network.modules[kohya], layers[name], f"{network.path}: {kohya}")
    return set(by_kohya)


def check_all_used(network: NetworkFile, used: set[str], base_names: set[str]) -> None:
    unused = sorted(set(network.modules) - used)
    if not unused:
        return
    unknown = [n for n in unused if n not in base_names]
    if unknown:
        raise ModelError(f"lora.init_weights = {network.path}: {len(unknown)} module(s) are not in this base model, "
                         f"e.g. {unknown[0]} (a LoRA for another architecture or model family?)")
    raise ModelError(f"lora.init_weights = {network.path} has {len(unused)} module(s) this job does not train, e.g. "
                     f"{unused[0]}: turn on the matching lora.train_ff / lora.train_conv / train_text_encoder")


def _copy_module(tensors: dict[str, torch.Tensor], layer, where: str) -> None:
    params = {}
    for suffix, tensor in tensors.items():
        if suffix == "alpha":
            continue
        if suffix == "lora_down.weight":
            params[suffix] = (layer.lora_A["default"].weight, tensor)
        elif suffix == "lora_up.weight":
            params[suffix] = (layer.lora_B["default"].weight, tensor)
        elif suffix == "dora_scale":
            magnitude = layer.lora_magnitude_vector["default"].weight
            # the export writes [out, 1, ...]; peft keeps [out] (Linear) or [1, out, 1, 1] (conv)
            params[suffix] = (magnitude, tensor.squeeze(1) if magnitude.dim() == 1 else tensor.transpose(0, 1))
        elif suffix.startswith(("hada_", "lokr_")):
            target = getattr(layer, suffix)
            if "default" not in target:
                raise ModelError(f"{where}: the job's layer has no {suffix} (it is built with other LoKr factors; "
                                 "match lora.rank, lora.lokr_factor and lora.lokr_decompose_both to the file)")
            if suffix == "lokr_w1" and "lokr_w2" in tensors:
                # the export baked peft's alpha / r into w1 of a LoKr with two full factors: take it out again
                tensor = tensor / layer.scaling["default"]
            params[suffix] = (target["default"], tensor)
        else:
            raise ModelError(f"{where}.{suffix} is not a tensor Kiln can continue from")
    expected = {n for n, p in layer.named_parameters() if p.requires_grad and ".default" in n}
    if len(params) != len(expected):
        raise ModelError(f"{where} has {sorted(params)} but the job's layer needs {len(expected)} tensors: match "
                         "lora.type, lora.dora and (LoKr) lora.lokr_factor / lora.lokr_decompose_both to the file")
    for suffix, (param, tensor) in params.items():
        if param.shape != tensor.shape:
            raise ModelError(f"{where}.{suffix} has shape {tuple(tensor.shape)}, the job's layer "
                             f"{tuple(param.shape)}: is the file for this base model and these lora settings?")
        param.copy_(tensor.to(param.dtype))

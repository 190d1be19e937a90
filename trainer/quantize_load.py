"""A quantized frozen denoiser built as its weights are read: the model is made on the meta device (no
memory), then each tensor is read from the memory-mapped .safetensors file in turn; a linear layer's weight is
quantized (int8 / nf4) as soon as it is read and its full-precision copy dropped, every other tensor is cast to
the training dtype. Peak host RAM is then the quantized model plus one layer, not the whole model in bf16
(docs/benchmarks.md, bench/quantize_load_rss.py).

Hand-written so that the layers are exactly the ones trainer/quantize.py makes from a loaded model (the test
compares them byte for byte), whatever bitsandbytes' own loading paths in diffusers or transformers expect.

The file must hold the denoiser in diffusers' layout (a model folder's diffusion_pytorch_model.safetensors:
its keys are the module's own names). Not yet used by the training loop, which loads the whole base first."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from .quantize import is_adapter, quantized_linear


def load_quantized_denoiser(model: torch.nn.Module, path: str | Path, kind: str, device="cpu",
                            dtype: torch.dtype = torch.bfloat16) -> int:
    """Fill `model` (built on the meta device) from `path`: its plain linear layers become `kind` layers on
    `device` computing in `dtype`, every other tensor `dtype` (floating) on `device`. The parameters quantized.
    A tensor the model has and the file lacks is an error naming it."""
    count = 0
    linears = {name: module for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and not is_adapter(name)}
    with safe_open(str(path), framework="pt") as file:
        present = set(file.keys())
        wanted = list(model.state_dict())  # parameters and saved buffers (a meta model lists them for free)
        missing = [n for n in wanted if n not in present]
        if missing:
            raise ValueError(f"{path}: no tensor {missing[0]!r} (and {len(missing) - 1} more) for this model")
        for name, linear in linears.items():
            bias = _read(file, f"{name}.bias", dtype) if linear.bias is not None else None
            layer = quantized_linear(_read(file, f"{name}.weight", dtype), bias, kind, dtype)
            _set(model, name, layer.to(device))  # quantized here; the full-precision weight goes with it
            count += linear.weight.numel()
        done = {f"{n}.{suffix}" for n in linears for suffix in ("weight", "bias")}
        for name in wanted:
            if name not in done:
                _place(model, name, _read(file, name, dtype).to(device))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a buffer the model makes itself and does not save: nothing in the file to fill it
        raise ValueError(f"{path}: {left[0]!r} is not in the file and cannot be loaded layer by layer")
    return count


def _read(file, name: str, dtype: torch.dtype) -> torch.Tensor:
    tensor = file.get_tensor(name)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _owner(model: torch.nn.Module, dotted: str) -> tuple[torch.nn.Module, str]:
    owner_name, _, leaf = dotted.rpartition(".")
    return (model.get_submodule(owner_name) if owner_name else model), leaf


def _set(model: torch.nn.Module, name: str, layer: torch.nn.Module) -> None:
    owner, leaf = _owner(model, name)
    setattr(owner, leaf, layer)


def _place(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, leaf = _owner(model, name)
    if leaf in owner._parameters:
        owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[leaf] = tensor

"""A quantized frozen denoiser built as its weights are read (training.base_quantization = "int8" | "nf4"):
the model is made on the meta device (no memory), then each tensor is read from the memory-mapped
.safetensors file(s) in turn; a linear layer's weight is rounded to the training dtype and quantized as soon as
it is read, its full-precision copy dropped; every other tensor is read in the load dtype. Peak host RAM is then
the quantized model plus one layer, not the whole model in full precision (docs/benchmarks.md,
bench/quantize_load_rss.py).

Hand-written so that the layers are exactly the ones trainer/quantize.py makes from a loaded model (the tests
compare them byte for byte, through the job loader too), whatever bitsandbytes' own loading paths in diffusers
or transformers expect.

The base model loaders (trainer/models/loading.py for SD 1.x/2.x/SDXL, trainer/families/dit/loading.py for
SD3/Flux/Chroma) use it for a diffusers model folder (or hub id) whose denoiser is stored as
diffusion_pytorch_model.safetensors, or sharded with diffusion_pytorch_model.safetensors.index.json: those keys
are the module's own names. A single-file checkpoint (original ldm / BFL layout, or a .ckpt) is not: diffusers
converts it as one whole state dict (from_single_file reads every tensor, then renames, splits fused qkv and
reshapes), so it is loaded in full precision and quantized after, and the load says so (`QUANTIZED_AFTER`)."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open

from .quantize import is_adapter, quantized_linear

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' SAFETENSORS_WEIGHTS_NAME
INDEX_NAME = f"{WEIGHTS_NAME}.index.json"              # diffusers' SAFE_WEIGHTS_INDEX_NAME (sharded weights)
# Why a source is quantized after loading, in the load's one line
SINGLE_FILE_WHY = ("is a single-file checkpoint, which diffusers converts to its own layout as one whole state dict "
                   "(renaming, splitting and reshaping tensors)")
FOLDER_WHY = "holds no diffusion_pytorch_model.safetensors (nor a sharded index of them)"


@dataclass(frozen=True)
class QuantizedLoad:
    """What the job asks of the loader: the denoiser's linear layers in `kind` (int8 / nf4), their weights
    rounded to `dtype` (the training dtype) first and computing in it: what the loop would make of them. Each
    layer is quantized on `device` (the training device: on a GPU bitsandbytes' CUDA kernels, the ones the loop
    used when it quantized after loading, and far faster than its CPU ones), its quantized bytes then kept in
    host RAM like the rest of the model until the loop places it."""
    kind: str
    dtype: torch.dtype
    device: str | torch.device = "cpu"


def quantized_after(kind: str, source: str, why: str) -> str:
    """The load's one line where the weights cannot be quantized as they are read."""
    return (f"{kind} base: {source} {why}, so the denoiser is loaded in full precision, then quantized: peak host "
            "RAM while loading is its full-precision size (a diffusers model folder is quantized as it is read)")


def quantized_as_read(kind: str, count: int, files: Sequence[Path]) -> str:
    """The load's one line where they were."""
    where = (f"{files[0].parent.name}/{files[0].name}" if len(files) == 1
             else f"{len(files)} shards in {files[0].parent.name}/")
    return (f"{kind} base: {count / 1e6:.1f} M denoiser parameters quantized layer by layer as they were read from "
            f"{where} (peak host RAM while loading: about the quantized size)")


def component_weight_files(folder: Path, subfolder: str) -> list[Path] | None:
    """The .safetensors files holding a diffusers folder's component (one file, or the shards its index
    names), or None when it has none (only .bin files, or a variant such as .fp16.safetensors)."""
    part = folder / subfolder
    if (part / WEIGHTS_NAME).is_file():
        return [part / WEIGHTS_NAME]
    if (part / INDEX_NAME).is_file():
        try:
            shards = sorted(set(json.loads((part / INDEX_NAME).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return None  # from_pretrained reports the unreadable index in its own words
        if shards and all((part / s).is_file() for s in shards):
            return [part / s for s in shards]
    return None


def load_quantized_component(cls, folder: Path, subfolder: str, quantize: QuantizedLoad,
                             dtype: torch.dtype) -> tuple[torch.nn.Module, str] | None:
    """(the denoiser of class `cls` from `folder/subfolder`, quantized as it is read, on the CPU; the line that
    says so), or None when its weights are not in files this can read (the caller loads it whole)."""
    files = component_weight_files(folder, subfolder)
    if files is None:
        return None
    with torch.device("meta"):
        model = cls.from_config(cls.load_config(folder, subfolder=subfolder))
    count = load_quantized_denoiser(model, files, quantize.kind, "cpu", quantize.dtype, other_dtype=dtype,
                                    quantize_on=quantize.device)
    return model.eval().requires_grad_(False), quantized_as_read(quantize.kind, count, files)


def load_quantized_denoiser(model: torch.nn.Module, path: str | Path | Sequence[str | Path], kind: str,
                            device="cpu", dtype: torch.dtype = torch.bfloat16,
                            other_dtype: torch.dtype | None = None, quantize_on=None) -> int:
    """Fill `model` (built on the meta device) from the file `path` (or the shards it lists): its plain linear
    layers become `kind` layers on `device` (quantized on `quantize_on`, default `device`), their weights
    rounded to `dtype` before quantizing and computing in it; every other floating tensor in `other_dtype`
    (default `dtype`) on `device`. The parameters quantized. A tensor the model has and the files lack is an
    error naming it."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    other_dtype = other_dtype or dtype
    count = 0
    linears = {name: module for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and not is_adapter(name)}
    with contextlib.ExitStack() as stack:
        owner = {}  # tensor name -> the open file holding it
        for p in paths:
            file = stack.enter_context(safe_open(str(p), framework="pt"))
            owner.update(dict.fromkeys(file.keys(), file))
        wanted = list(model.state_dict())  # parameters and saved buffers (a meta model lists them for free)
        missing = [n for n in wanted if n not in owner]
        if missing:
            raise ValueError(f"{paths[0]}: no tensor {missing[0]!r} (and {len(missing) - 1} more) for this model")
        for name, linear in linears.items():
            bias = _read(owner, f"{name}.bias", dtype) if linear.bias is not None else None
            layer = quantized_linear(_read(owner, f"{name}.weight", dtype), bias, kind, dtype)
            # quantized by its first move, then its bytes moved on; the full-precision weight goes with it
            _set(model, name, layer.to(quantize_on or device).to(device))
            count += linear.weight.numel()
        done = {f"{n}.{suffix}" for n in linears for suffix in ("weight", "bias")}
        for name in wanted:
            if name not in done:
                _place(model, name, _read(owner, name, other_dtype).to(device))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a buffer the model makes itself and does not save: nothing in the file to fill it
        raise ValueError(f"{paths[0]}: {left[0]!r} is not in the file and cannot be loaded layer by layer")
    return count


def _read(owner: dict, name: str, dtype: torch.dtype) -> torch.Tensor:
    tensor = owner[name].get_tensor(name)
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

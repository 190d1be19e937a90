"""Weight changes -> LoRA modules by SVD (resize, merge to a LoRA, extract), and writing such a LoRA file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from ..atomic import write_atomically
from ..export.hashes import addnet_hashes

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass
class Kept:
    """What one module kept: its new rank and the fraction of the change's energy (squared singular values,
    i.e. squared Frobenius norm) that rank holds."""
    module: str
    rank: int
    energy: float


def choose_rank(singular: torch.Tensor, rank: int | None, dynamic: str | None, value: float | None) -> int:
    """Kohya's resize rules: a fixed rank, or sv_ratio (keep s >= s_max / value), sv_fro (the smallest rank
    whose Frobenius norm fraction reaches value), sv_cumulative (... whose sum of s fraction reaches value);
    with both, `rank` caps the dynamic choice."""
    if dynamic is not None and dynamic not in DYNAMIC_METHODS:
        raise ValueError(f"unknown dynamic method {dynamic!r}; expected one of {', '.join(DYNAMIC_METHODS)}")
    n = len(singular)
    if dynamic is None:
        chosen = rank
    elif float(singular[0]) == 0.0:
        chosen = 1
    elif dynamic == "sv_ratio":
        chosen = int((singular >= singular[0] / value).sum())
    else:
        weights = singular ** 2 if dynamic == "sv_fro" else singular
        fraction = torch.cumsum(weights, 0) / weights.sum()
        if dynamic == "sv_fro":
            fraction = fraction.sqrt()
        chosen = int((fraction < value - 1e-12).sum()) + 1
    if dynamic is not None and rank is not None:
        chosen = min(chosen, rank)
    return max(1, min(chosen, n))


def lora_from_delta(name: str, delta: torch.Tensor, weight_shape: tuple[int, ...], rank: int | None,
                    dynamic: str | None = None, value: float | None = None) -> tuple[dict[str, torch.Tensor], Kept]:
    """The Kohya tensors (lora_down/lora_up/alpha, alpha = rank so the scale is 1) closest to `delta` at the
    chosen rank. The singular values are split evenly (sqrt into each factor) so fp16 saves keep precision."""
    from .validate import require_finite

    matrix = require_finite(delta.reshape(weight_shape[0], -1).float(), f"the change of module {name}")
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = choose_rank(s, rank, dynamic, value)
    root = s[:r].sqrt()
    up, down = u[:, :r] * root, root[:, None] * vh[:r]
    if len(weight_shape) == 4:
        up, down = up.reshape(weight_shape[0], r, 1, 1), down.reshape(r, *weight_shape[1:])
    total = float((s ** 2).sum())
    energy = float((s[:r] ** 2).sum()) / total if total > 0 else 1.0
    tensors = {f"{name}.lora_down.weight": down.contiguous(), f"{name}.lora_up.weight": up.contiguous(),
               f"{name}.alpha": torch.tensor(float(r))}
    return tensors, Kept(name, r, energy)


def write_lora_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], force: bool,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write a Kohya LoRA with the A1111 hashes in its metadata, atomically; an existing file only with force."""
    from .validate import require_finite

    refuse_existing(path, force)
    tensors = {k: require_finite(v.detach().to("cpu", dtype if v.dim() else torch.float32).contiguous(),
                                 f"{path}: {k}") for k, v in tensors.items()}
    ranks = [int(v.shape[0]) for k, v in tensors.items() if k.endswith(".lora_down.weight")]
    top = max(ranks, default=0)
    metadata = {**metadata, "ss_network_module": "networks.lora", "ss_network_dim": str(top),
                "ss_network_alpha": str(float(top))}
    metadata.pop("ss_network_args", None)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = addnet_hashes(tensors, metadata)
    return write_atomically(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))


def refuse_existing(path: Path, force: bool) -> None:
    if Path(path).exists() and not force:
        raise FileExistsError(f"{path} already exists; pass --force to replace it")

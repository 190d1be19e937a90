"""Original-layout ↔ diffusers weight names for the transformer families, as one table per model.

A row sends one original module (e.g. Flux's `double_blocks.0.img_attn.qkv`) to the diffusers modules it was
split into (`transformer_blocks.0.attn.to_q`, `.to_k`, `.to_v`), each with its number of output rows. The same
table converts weights both ways (tiny single files are written with it, single files are read with it) and
names LoRA modules for export. Written here because diffusers converts only one way, and its Flux and Chroma
converters hard-code the 3072 width of the real models, so they cannot read a tiny model built for tests.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ...models.errors import ModelError

WEIGHT_AND_BIAS = (("weight", "weight"), ("bias", "bias"))


@dataclass(frozen=True)
class ModuleRow:
    original: str                       # module (or bare tensor) path in the original layout
    parts: tuple[tuple[str, int], ...]  # (diffusers path, output rows) in the order the original fuses them
    params: tuple[tuple[str, str], ...] = WEIGHT_AND_BIAS  # (original suffix, diffusers suffix); "" = bare tensor
    swap_halves: bool = False           # (shift, scale) in the original, (scale, shift) in diffusers

    @property
    def fused(self) -> bool:
        return len(self.parts) > 1


def row(original: str, diffusers: str, params=WEIGHT_AND_BIAS, swap_halves: bool = False) -> ModuleRow:
    return ModuleRow(original, ((diffusers, 0),), params, swap_halves)


def fused(original: str, parts: Iterable[tuple[str, int]]) -> ModuleRow:
    return ModuleRow(original, tuple(parts))


def _key(module: str, suffix: str) -> str:
    return f"{module}.{suffix}" if suffix else module


def _swap(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(state_dict: Mapping[str, torch.Tensor], rows: Iterable[ModuleRow], source: str,
                 prefix: str = "") -> dict[str, torch.Tensor]:
    """Original-layout tensors (under `prefix`) → diffusers names. Every row's tensors must be present
    (biases where the original has them); a missing one names the file and the key."""
    out: dict[str, torch.Tensor] = {}
    for r in rows:
        for original_suffix, diffusers_suffix in r.params:
            key = prefix + _key(r.original, original_suffix)
            if key not in state_dict:
                if original_suffix == "bias":
                    continue
                raise ModelError(f"{source} lacks {key!r}; it is not a complete checkpoint of this model")
            tensor = state_dict[key]
            if r.swap_halves:
                tensor = _swap(tensor)
            pieces = torch.split(tensor, [rows for _, rows in r.parts]) if r.fused else (tensor,)
            for (path, _), piece in zip(r.parts, pieces):
                out[_key(path, diffusers_suffix)] = piece.contiguous()
    return out


def to_original(state_dict: Mapping[str, torch.Tensor], rows: Iterable[ModuleRow],
                prefix: str = "") -> dict[str, torch.Tensor]:
    """Diffusers tensors → original-layout names (under `prefix`): the inverse of `to_diffusers`."""
    out: dict[str, torch.Tensor] = {}
    for r in rows:
        for original_suffix, diffusers_suffix in r.params:
            keys = [_key(path, diffusers_suffix) for path, _ in r.parts]
            if not all(k in state_dict for k in keys):
                continue
            tensor = torch.cat([state_dict[k] for k in keys], dim=0) if r.fused else state_dict[keys[0]]
            out[prefix + _key(r.original, original_suffix)] = _swap(tensor) if r.swap_halves else tensor
    return out


def check_covers(rows: Iterable[ModuleRow], diffusers_keys: Iterable[str], what: str) -> None:
    """The table must name every tensor of the model (a test and the single-file writer rely on it)."""
    named = {_key(p, d) for r in rows for p, _ in r.parts for _, d in r.params}
    missing = sorted(set(diffusers_keys) - named)
    if missing:
        raise ModelError(f"the {what} key table misses {len(missing)} tensors, e.g. {missing[:3]}")

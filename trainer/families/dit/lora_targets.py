"""Which Linear layers of a transformer a LoRA adapts, as full diffusers module names for peft.

Flux follows sd-scripts' `lora_flux.py` options: `train_blocks` ("all", "double", "single"),
`train_double_block_indices` / `train_single_block_indices` ("0-5,10": the blocks that train; empty: all) and
which sub-layers (attention, MLP, modulation). Names are diffusers', where q/k/v (and Flux's single-block MLP
input) are separate layers; the export fuses them back (trainer/families/dit/fused_lora.py).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from ...models.errors import ModelError

FLUX_DOUBLE = {"attn": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                        "attn.add_v_proj", "attn.to_add_out"),
               "mlp": ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
               "mod": ("norm1.linear", "norm1_context.linear")}
# linear2 (proj_out) reads the attention output and the MLP together: it trains with either
FLUX_SINGLE = {"attn": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_out"), "mlp": ("proj_mlp", "proj_out"),
               "mod": ("norm.linear",)}
SD3_BLOCK = {"attn": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                      "attn.add_v_proj", "attn.to_add_out", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
             "mlp": ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
             "mod": ("norm1.linear", "norm1_context.linear")}
SUBLAYERS = ("attn", "mlp", "mod")
TRAIN_BLOCKS = ("all", "double", "single")


def parse_indices(text: str, count: int | None, what: str) -> list[int] | None:
    """"0-5,10" → [0, 1, 2, 3, 4, 5, 10]; "" → None (every block). Malformed parts, and with `count` known
    blocks outside 0..count-1, are refused."""
    if not text.strip():
        return None
    chosen: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
        except ValueError:
            raise ModelError(f"{what} = {text!r}: {part!r} is not a block number or a range like 0-5") from None
        if first < 0 or last < first or (count is not None and last >= count):
            limit = f"the model's blocks 0-{count - 1}" if count is not None else "a range from low to high"
            raise ModelError(f"{what} = {text!r}: {part!r} is outside {limit}")
        chosen.update(range(first, last + 1))
    return sorted(chosen)


def _blocks(prefix: str, indices: list[int] | None, table: dict, sublayers: Iterable[str]) -> str:
    leaves = sorted({re.escape(leaf) for sublayer in sublayers for leaf in table[sublayer]})
    number = r"\d+" if indices is None else "(?:" + "|".join(map(str, indices)) + ")"
    return rf"{prefix}\.{number}\.(?:{'|'.join(leaves)})"


def _check_sublayers(sublayers: Iterable[str]) -> list[str]:
    sublayers = list(sublayers)
    unknown = [s for s in sublayers if s not in SUBLAYERS]
    if unknown or not sublayers:
        raise ModelError(f"LoRA sub-layers {sublayers!r}: expected some of {', '.join(SUBLAYERS)}")
    return sublayers


def flux_target_regex(train_blocks: str = "all", double_indices: str = "", single_indices: str = "",
                      sublayers: Iterable[str] = SUBLAYERS, num_layers: int | None = None,
                      num_single_layers: int | None = None) -> str:
    """The peft target pattern (a full-match regex of module names) of a Flux or Chroma LoRA."""
    if train_blocks not in TRAIN_BLOCKS:
        raise ModelError(f"train_blocks = {train_blocks!r}; expected one of {', '.join(TRAIN_BLOCKS)}")
    sublayers = _check_sublayers(sublayers)
    parts = []
    if train_blocks in ("all", "double"):
        parts.append(_blocks("transformer_blocks", parse_indices(double_indices, num_layers,
                                                                 "train_double_block_indices"), FLUX_DOUBLE, sublayers))
    if train_blocks in ("all", "single"):
        parts.append(_blocks("single_transformer_blocks", parse_indices(
            single_indices, num_single_layers, "train_single_block_indices"), FLUX_SINGLE, sublayers))
    return "|".join(f"(?:{p})" for p in parts)


def sd3_target_regex(block_indices: str = "", sublayers: Iterable[str] = SUBLAYERS,
                     num_layers: int | None = None) -> str:
    """The peft target pattern of an SD3 MMDiT's LoRA: the joint blocks' attention / MLP / modulation linears."""
    indices = parse_indices(block_indices, num_layers, "train_double_block_indices")
    return _blocks("transformer_blocks", indices, SD3_BLOCK, _check_sublayers(sublayers))


def matching(transformer, pattern: str) -> list[str]:
    """The Linear modules of `transformer` that `pattern` selects (what peft will adapt)."""
    return [name for name, module in transformer.named_modules()
            if isinstance(module, torch.nn.Linear) and re.fullmatch(pattern, name)]


def flux_targets(transformer, train_blocks: str = "all", double_indices: str = "", single_indices: str = "",
                 sublayers: Iterable[str] = SUBLAYERS) -> list[str]:
    """Full module names of a Flux or Chroma transformer's LoRA (Chroma has no per-block modulation)."""
    config = transformer.config
    return matching(transformer, flux_target_regex(train_blocks, double_indices, single_indices, sublayers,
                                                   config.num_layers, config.num_single_layers))


def sd3_targets(transformer, block_indices: str = "", sublayers: Iterable[str] = SUBLAYERS) -> list[str]:
    return matching(transformer, sd3_target_regex(block_indices, sublayers, transformer.config.num_layers))

"""Which Linear layers of a transformer a LoRA adapts, as full diffusers module names for peft.

Flux follows sd-scripts' `lora_flux.py` options: `train_blocks` ("all", "double", "single"),
`train_double_block_indices` / `train_single_block_indices` ("0-5,10": the blocks that train; empty: all) and
which sub-layers (attention, MLP, modulation). Names are diffusers', where q/k/v (and Flux's single-block MLP
input) are separate layers; the export fuses them back (trainer/families/dit/fused_lora.py).
"""
from __future__ import annotations

from collections.abc import Iterable

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


def parse_indices(text: str, count: int, what: str) -> list[int]:
    """"0-5,10" → [0, 1, 2, 3, 4, 5, 10]; "" → every block. Out-of-range or malformed parts are refused."""
    if not text.strip():
        return list(range(count))
    chosen: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
        except ValueError:
            raise ModelError(f"{what} = {text!r}: {part!r} is not a block number or a range like 0-5") from None
        if not 0 <= first <= last < count:
            raise ModelError(f"{what} = {text!r}: {part!r} is outside the model's blocks 0-{count - 1}")
        chosen.update(range(first, last + 1))
    return sorted(chosen)


def _names(prefix: str, indices: Iterable[int], table: dict, sublayers: Iterable[str], present: set[str]) -> list[str]:
    names = []
    for i in indices:
        for sublayer in sublayers:
            for leaf in table[sublayer]:
                name = f"{prefix}.{i}.{leaf}"
                if name in present and name not in names:
                    names.append(name)
    return names


def _check_sublayers(sublayers: Iterable[str]) -> list[str]:
    sublayers = list(sublayers)
    unknown = [s for s in sublayers if s not in SUBLAYERS]
    if unknown or not sublayers:
        raise ModelError(f"LoRA sub-layers {sublayers!r}: expected some of {', '.join(SUBLAYERS)}")
    return sublayers


def flux_targets(transformer, train_blocks: str = "all", double_indices: str = "", single_indices: str = "",
                 sublayers: Iterable[str] = SUBLAYERS) -> list[str]:
    """Full module names of a Flux or Chroma transformer's LoRA (Chroma has no per-block modulation)."""
    if train_blocks not in TRAIN_BLOCKS:
        raise ModelError(f"train_blocks = {train_blocks!r}; expected one of {', '.join(TRAIN_BLOCKS)}")
    sublayers = _check_sublayers(sublayers)
    present = {name for name, _ in transformer.named_modules()}
    config = transformer.config
    names = []
    if train_blocks in ("all", "double"):
        names += _names("transformer_blocks", parse_indices(double_indices, config.num_layers,
                                                            "train_double_block_indices"), FLUX_DOUBLE, sublayers, present)
    if train_blocks in ("all", "single"):
        names += _names("single_transformer_blocks", parse_indices(single_indices, config.num_single_layers,
                                                                   "train_single_block_indices"), FLUX_SINGLE,
                        sublayers, present)
    return names


def sd3_targets(transformer, block_indices: str = "", sublayers: Iterable[str] = SUBLAYERS) -> list[str]:
    """Full module names of an SD3 MMDiT's LoRA: the joint blocks' attention / MLP / modulation linears."""
    present = {name for name, _ in transformer.named_modules()}
    indices = parse_indices(block_indices, transformer.config.num_layers, "train_block_indices")
    return _names("transformer_blocks", indices, SD3_BLOCK, _check_sublayers(sublayers), present)

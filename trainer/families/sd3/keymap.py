"""SD 3 / 3.5's original (Stability, MMDiT) layout ↔ diffusers names, from the transformer's config.

Loading uses diffusers' own converter (it reads any width); this table writes tiny single files and names LoRA
modules for export (the original fuses q, k, v into one `qkv` Linear, diffusers keeps them apart).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..dit.keymap import ModuleRow, fused, row

BARE = (("", ""),)
WEIGHT = (("weight", "weight"),)


def sd3_rows(config: Mapping[str, Any]) -> list[ModuleRow]:
    """The key table of an SD3 transformer of this config."""
    width = config["num_attention_heads"] * config["attention_head_dim"]
    last = config["num_layers"] - 1
    qk_norm = bool(config.get("qk_norm"))
    rows = [row("pos_embed", "pos_embed.pos_embed", BARE), row("x_embedder.proj", "pos_embed.proj"),
            row("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
            row("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
            row("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
            row("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
            row("context_embedder", "context_embedder")]
    for i in range(config["num_layers"]):
        o, d = f"joint_blocks.{i}", f"transformer_blocks.{i}"
        attentions = [("x_block.attn", "attn", ("to_q", "to_k", "to_v"), "to_out.0", ("norm_q", "norm_k")),
                      ("context_block.attn", "attn", ("add_q_proj", "add_k_proj", "add_v_proj"),
                       "to_add_out" if i < last else None, ("norm_added_q", "norm_added_k"))]
        if i in tuple(config.get("dual_attention_layers") or ()):
            attentions.append(("x_block.attn2", "attn2", ("to_q", "to_k", "to_v"), "to_out.0", ("norm_q", "norm_k")))
        for original, module, qkv, out, norms in attentions:
            rows.append(fused(f"{o}.{original}.qkv", [(f"{d}.{module}.{name}", width) for name in qkv]))
            if out:
                rows.append(row(f"{o}.{original}.proj", f"{d}.{module}.{out}"))
            if qk_norm:
                rows += [row(f"{o}.{original}.ln_q", f"{d}.{module}.{norms[0]}", WEIGHT),
                         row(f"{o}.{original}.ln_k", f"{d}.{module}.{norms[1]}", WEIGHT)]
        rows += [row(f"{o}.x_block.adaLN_modulation.1", f"{d}.norm1.linear"),
                 row(f"{o}.context_block.adaLN_modulation.1", f"{d}.norm1_context.linear", swap_halves=i == last),
                 row(f"{o}.x_block.mlp.fc1", f"{d}.ff.net.0.proj"), row(f"{o}.x_block.mlp.fc2", f"{d}.ff.net.2")]
        if i < last:
            rows += [row(f"{o}.context_block.mlp.fc1", f"{d}.ff_context.net.0.proj"),
                     row(f"{o}.context_block.mlp.fc2", f"{d}.ff_context.net.2")]
    rows += [row("final_layer.linear", "proj_out"),
             row("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves=True)]
    return rows

"""Flux's (and Chroma's) original BFL layout ↔ diffusers names, from the transformer's config.

The original fuses q, k, v into one `qkv` Linear in the double blocks, and q, k, v and the MLP input into one
`linear1` in the single blocks; diffusers keeps them apart. Chroma is the same transformer without per-block
modulation layers and with a `distilled_guidance_layer` that computes every modulation at once.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..dit.keymap import ModuleRow, fused, row

SCALE = (("scale", "weight"),)
MLP_RATIO = 4


def _mlp(prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}_in.in_layer", "linear_1"), (f"{prefix}_in.out_layer", "linear_2")]


def flux_rows(config: Mapping[str, Any], chroma: bool = False) -> list[ModuleRow]:
    """The key table of a Flux (or, with chroma=True, Chroma) transformer of this config."""
    width = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = width * MLP_RATIO
    rows = [row("txt_in", "context_embedder"), row("img_in", "x_embedder")]
    if chroma:
        g = "distilled_guidance_layer"
        rows += [row(f"{g}.in_proj", f"{g}.in_proj"), row(f"{g}.out_proj", f"{g}.out_proj")]
        for i in range(config["approximator_layers"]):
            rows += [row(f"{g}.layers.{i}.in_layer", f"{g}.layers.{i}.linear_1"),
                     row(f"{g}.layers.{i}.out_layer", f"{g}.layers.{i}.linear_2"),
                     row(f"{g}.norms.{i}", f"{g}.norms.{i}", SCALE)]
    else:
        embedders = [("time", "timestep_embedder"), ("vector", "text_embedder")]
        if config.get("guidance_embeds"):
            embedders.append(("guidance", "guidance_embedder"))
        for original, diffusers in embedders:
            rows += [row(f"{original}_in.in_layer", f"time_text_embed.{diffusers}.linear_1"),
                     row(f"{original}_in.out_layer", f"time_text_embed.{diffusers}.linear_2")]
    for i in range(config["num_layers"]):
        o, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        for stream, q, k, v, out, ff, norm_q, norm_k, mod in (
                ("img", "to_q", "to_k", "to_v", "to_out.0", "ff", "norm_q", "norm_k", "norm1"),
                ("txt", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context", "norm_added_q",
                 "norm_added_k", "norm1_context")):
            rows += [fused(f"{o}.{stream}_attn.qkv", [(f"{d}.attn.{q}", width), (f"{d}.attn.{k}", width),
                                                       (f"{d}.attn.{v}", width)]),
                     row(f"{o}.{stream}_attn.proj", f"{d}.attn.{out}"),
                     row(f"{o}.{stream}_attn.norm.query_norm", f"{d}.attn.{norm_q}", SCALE),
                     row(f"{o}.{stream}_attn.norm.key_norm", f"{d}.attn.{norm_k}", SCALE),
                     row(f"{o}.{stream}_mlp.0", f"{d}.{ff}.net.0.proj"),
                     row(f"{o}.{stream}_mlp.2", f"{d}.{ff}.net.2")]
            if not chroma:
                rows.append(row(f"{o}.{stream}_mod.lin", f"{d}.{mod}.linear"))
    for i in range(config["num_single_layers"]):
        o, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        rows += [fused(f"{o}.linear1", [(f"{d}.attn.to_q", width), (f"{d}.attn.to_k", width),
                                        (f"{d}.attn.to_v", width), (f"{d}.proj_mlp", mlp)]),
                 row(f"{o}.linear2", f"{d}.proj_out"),
                 row(f"{o}.norm.query_norm", f"{d}.attn.norm_q", SCALE),
                 row(f"{o}.norm.key_norm", f"{d}.attn.norm_k", SCALE)]
        if not chroma:
            rows.append(row(f"{o}.modulation.lin", f"{d}.norm.linear"))
    rows.append(row("final_layer.linear", "proj_out"))
    if not chroma:
        rows.append(row("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves=True))
    return rows

"""Chroma's adapter: T5 only (masked), packed latents, σ timestep, no guidance input."""
from __future__ import annotations

from ..dit.adapter import TransformerAdapter
from ..dit.lora_targets import flux_target_regex
from ..flux.adapter import _t5_length
from . import conditioning
from .model import CHROMA_LAYOUT


class ChromaAdapter(TransformerAdapter):
    layout = CHROMA_LAYOUT
    pipeline_name = "ChromaPipeline"

    def make_tiny(self, seed: int = 0) -> dict:
        from .tiny import make_tiny_chroma
        return make_tiny_chroma(seed)

    def text_parts(self, model):
        return conditioning.text_parts(_t5_length(model.tokenizers[0], 512))

    def predict(self, denoiser, noisy, timesteps, cond, batch):
        return conditioning.predict(denoiser, noisy, timesteps / 1000, cond)

    def lora_pattern(self, lora_cfg, transformer_config=None) -> str:
        config = transformer_config or {}
        return flux_target_regex(lora_cfg.train_blocks, lora_cfg.train_double_block_indices,
                                 lora_cfg.train_single_block_indices, lora_cfg.transformer_layers,
                                 config.get("num_layers"), config.get("num_single_layers"))

"""Flux.1's adapter: CLIP-L pooled + T5, packed latents, σ timestep, the guidance input of dev models."""
from __future__ import annotations

from ..dit.adapter import TransformerAdapter
from ..dit.lora_targets import flux_target_regex
from . import conditioning
from .model import FLUX_LAYOUT


class FluxAdapter(TransformerAdapter):
    layout = FLUX_LAYOUT
    pipeline_name = "FluxPipeline"
    guidance = conditioning.GUIDANCE_FOR_TRAINING  # set from training.guidance_scale by objective()

    def objective(self, training, model):
        if training is not None:
            self.guidance = training.guidance_scale
        return super().objective(training, model)

    def make_tiny(self, seed: int = 0) -> dict:
        from .tiny import make_tiny_flux
        return make_tiny_flux(seed)

    def text_parts(self, model):
        guidance_model = bool(model.unet.config.guidance_embeds)
        return conditioning.text_parts(_t5_length(model.tokenizers[1], 512 if guidance_model else 256))

    def predict(self, denoiser, noisy, timesteps, cond, batch):
        return conditioning.predict(denoiser, noisy, timesteps / 1000, cond, guidance=self.guidance)

    def lora_pattern(self, lora_cfg, transformer_config=None) -> str:
        config = transformer_config or {}
        return flux_target_regex(lora_cfg.train_blocks, lora_cfg.train_double_block_indices,
                                 lora_cfg.train_single_block_indices, lora_cfg.transformer_layers,
                                 config.get("num_layers"), config.get("num_single_layers"))


def _t5_length(tokenizer, family_default: int) -> int:
    """T5 tokens per caption: the family's (sd-scripts' t5xxl_max_token_length defaults), capped by the
    tokenizer's own limit (Kiln's tiny T5 takes 77)."""
    limit = getattr(tokenizer, "model_max_length", family_default) or family_default
    return min(family_default, int(limit))

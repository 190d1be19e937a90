"""SD 3/3.5's adapter: CLIP-L + CLIP-G (+ T5, or its zeros), unpacked latents, 0–1000 timestep."""
from __future__ import annotations

from ..dit.adapter import TransformerAdapter
from ..dit.lora_targets import sd3_target_regex
from ..flux.adapter import _t5_length
from . import conditioning
from .model import SD3_LAYOUT


class SD3Adapter(TransformerAdapter):
    layout = SD3_LAYOUT
    pipeline_name = "StableDiffusion3Pipeline"
    kohya_network_module = "networks.lora_sd3"

    def make_tiny(self, seed: int = 0) -> dict:
        from .tiny import make_tiny_sd3
        return make_tiny_sd3(seed)

    def text_parts(self, model):
        t5_tokenizer = model.tokenizers[2]
        length = _t5_length(t5_tokenizer, conditioning.T5_TOKENS) if t5_tokenizer is not None else conditioning.T5_TOKENS
        return conditioning.text_parts(model.unet.config.joint_attention_dim, length)

    def predict(self, denoiser, noisy, timesteps, cond, batch):
        return conditioning.predict(denoiser, noisy, timesteps / 1000, cond)

    def lora_pattern(self, lora_cfg, transformer_config=None) -> str:
        config = transformer_config or {}
        return sd3_target_regex(lora_cfg.train_double_block_indices, lora_cfg.transformer_layers,
                                config.get("num_layers"))

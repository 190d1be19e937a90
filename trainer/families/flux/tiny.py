"""A tiny random Flux.1 model (the real architecture at toy width and depth), for tests and demos. Its width
(64) is at least the 64 values of a packed 2x2 latent patch, so a LoRA can learn the velocity at all."""
from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel

from ...models.tokenizers import clip_tokenizer
from ..dit.t5 import tiny_t5_encoder, tiny_t5_tokenizer
from ..dit.tiny_parts import flow_scheduler, pass_latents_through, tiny_clip, tiny_flow_vae


def make_tiny_flux(seed: int = 0, guidance: bool = True) -> dict:
    """Components of a tiny Flux model, ready for FluxPipeline(**c): dev-style (guidance embedding) by default,
    schnell-style with guidance=False."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    pass_latents_through(transformer)
    scheduler = flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                               base_image_seq_len=256, max_image_seq_len=4096) if guidance else flow_scheduler(shift=1.0)
    return dict(transformer=transformer, vae=tiny_flow_vae(0.3611, 0.1159), text_encoder=tiny_clip(32),
                tokenizer=clip_tokenizer(), text_encoder_2=tiny_t5_encoder(32), tokenizer_2=tiny_t5_tokenizer(),
                scheduler=scheduler)

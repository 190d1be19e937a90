"""A tiny random SD 3.5-style model (MMDiT with qk RMS-norm, CLIP-L + CLIP-G + T5), for tests and demos."""
from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel

from ...models.tokenizers import clip_tokenizer, openclip_tokenizer
from ..dit.t5 import tiny_t5_encoder, tiny_t5_tokenizer
from ..dit.tiny_parts import flow_scheduler, pass_latents_through, tiny_clip, tiny_flow_vae

CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 32, 64, 96  # the CLIP hidden states (L ‖ G) are padded to T5's width


def make_tiny_sd3(seed: int = 0) -> dict:
    """Components of a tiny SD3 model, ready for StableDiffusion3Pipeline(**c). As in the real one, CLIP-G is
    wider than CLIP-L (the single-file loader tells them apart by it) and both together fit in T5's width."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=4, joint_attention_dim=T5_WIDTH,
                                        caption_projection_dim=64, pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
                                        out_channels=16, pos_embed_max_size=32, qk_norm="rms_norm",
                                        dual_attention_layers=(0,))
    pass_latents_through(transformer)
    return dict(transformer=transformer, vae=tiny_flow_vae(1.5305, 0.0609),
                text_encoder=tiny_clip(CLIP_L_WIDTH, with_projection=True), tokenizer=clip_tokenizer(),
                text_encoder_2=tiny_clip(CLIP_G_WIDTH, with_projection=True, activation="gelu"),
                tokenizer_2=openclip_tokenizer(), text_encoder_3=tiny_t5_encoder(T5_WIDTH),
                tokenizer_3=tiny_t5_tokenizer(), scheduler=flow_scheduler(shift=3.0))

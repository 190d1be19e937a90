"""A tiny random Chroma model, for tests and demos."""
from __future__ import annotations

import torch
from diffusers import ChromaTransformer2DModel

from ..dit.t5 import tiny_t5_encoder, tiny_t5_tokenizer
from ..dit.tiny_parts import flow_scheduler, pass_latents_through, tiny_flow_vae


def make_tiny_chroma(seed: int = 0) -> dict:
    """Components of a tiny Chroma model, ready for ChromaPipeline(**c)."""
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                                           attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                           axes_dims_rope=(4, 6, 6), approximator_num_channels=8,
                                           approximator_hidden_dim=32, approximator_layers=2)
    pass_latents_through(transformer)
    return dict(transformer=transformer, vae=tiny_flow_vae(0.3611, 0.1159), text_encoder=tiny_t5_encoder(32),
                tokenizer=tiny_t5_tokenizer(), scheduler=flow_scheduler(shift=3.0, use_dynamic_shifting=True,
                                                                        base_shift=0.5, max_shift=1.15,
                                                                        base_image_seq_len=256,
                                                                        max_image_seq_len=4096))

"""Tiny random components shared by the transformer families' tiny models: a 16-channel VAE as theirs are,
CLIP encoders and a flow-matching scheduler."""
from __future__ import annotations

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

from ...models.tiny import _tiny_text_encoder


def tiny_flow_vae(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    # Four blocks: latents are 1/8 of the image, as in the real models. No quant convs, as in Flux's and SD3's.
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16, 16, 16),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=scaling_factor,
                         shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False)


def tiny_clip(hidden: int, with_projection: bool = False, activation: str = "quick_gelu"):
    return _tiny_text_encoder(hidden, projection=hidden, with_projection=with_projection, activation=activation)


def flow_scheduler(**options) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **options)

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


def pass_latents_through(transformer) -> None:
    """Make a tiny random transformer's input embedding and output projection identities (width = the 64 values
    of a 2x2 patch of 16 latent channels), so the denoiser starts by handing its noisy input back, as a trained
    one nearly does at high noise. With random ones a LoRA, which adapts only the blocks between them, cannot
    learn the velocity's noise part at all and the learn tests would measure the base's handicap."""
    import torch
    with torch.no_grad():
        if hasattr(transformer, "x_embedder"):  # Flux / Chroma: packed tokens of 64 values in and out
            for layer in (transformer.x_embedder, transformer.proj_out):
                layer.weight.copy_(torch.eye(*layer.weight.shape))
                layer.bias.zero_()
            return
        # SD3: a 2x2 patchifying conv in, a Linear out that the model unpatchifies as (p, q, channel)
        conv, out = transformer.pos_embed.proj, transformer.proj_out
        channels, p = conv.weight.shape[1], conv.weight.shape[2]
        conv.weight.zero_()
        out.weight.zero_()
        for c in range(channels):
            for i in range(p):
                for j in range(p):
                    hidden = (i * p + j) * channels + c
                    conv.weight[hidden, c, i, j] = 1.0
                    out.weight[hidden, hidden] = 1.0
        conv.bias.zero_()
        out.bias.zero_()

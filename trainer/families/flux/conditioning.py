"""Flux's caption conditioning and denoiser call, as FluxPipeline does them.

Captions: CLIP-L's pooled output (`pooled_projections`) and T5-XXL's last hidden state (`encoder_hidden_states`,
unmasked, 512 tokens for dev and 256 for schnell). Latents [B, 16, H, W] are packed into 2×2 patches
([B, H/2·W/2, 64]) with position ids (0, row, column) per patch and zeros for the text tokens. The transformer
takes the timestep as σ in [0, 1]; dev-style models (guidance embedding) also take a guidance value, which
training sets to a constant (`GUIDANCE_FOR_TRAINING`, as sd-scripts' `--guidance_scale 1.0` examples and
ai-toolkit do: the distilled guidance is conditioned on, not learned).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dit.text import clip_outputs, t5_hidden

GUIDANCE_FOR_TRAINING = 1.0
T5_TOKENS = {"dev": 512, "schnell": 256}


@dataclass
class FluxCond:
    t5: torch.Tensor       # [B, T, 4096] (cacheable)
    pooled: torch.Tensor   # [B, 768] CLIP-L pooled


def encode_t5(tokenizer, encoder, captions: list[str], device, max_length: int = 512) -> torch.Tensor:
    return t5_hidden(tokenizer, encoder, captions, max_length, device)[0]


def encode_clip(tokenizer, encoder, captions: list[str], device) -> torch.Tensor:
    return clip_outputs(tokenizer, encoder, captions, device)[1]


def encode(tokenizers, text_encoders, captions: list[str], device, max_length: int = 512) -> FluxCond:
    return FluxCond(t5=encode_t5(tokenizers[1], text_encoders[1], captions, device, max_length),
                    pooled=encode_clip(tokenizers[0], text_encoders[0], captions, device))


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, H/2·W/2, 4C]: each 2×2 patch becomes one token (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack`, for latents of `height` × `width`."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """[H/2·W/2, 3] position ids of the packed tokens: (0, row, column)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def predict(transformer, noisy: torch.Tensor, sigmas: torch.Tensor, cond: FluxCond,
            guidance: float = GUIDANCE_FOR_TRAINING) -> torch.Tensor:
    """The velocity prediction for `noisy` latents [B, 16, H, W] at `sigmas` [B] in [0, 1], unpacked."""
    b, _, h, w = noisy.shape
    dtype = noisy.dtype
    guidance_input = (torch.full((b,), guidance, device=noisy.device, dtype=torch.float32)
                      if transformer.config.guidance_embeds else None)
    out = transformer(hidden_states=pack(noisy), timestep=sigmas.to(dtype), guidance=guidance_input,
                      pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.t5.to(dtype),
                      txt_ids=torch.zeros(cond.t5.shape[1], 3, device=noisy.device, dtype=dtype),
                      img_ids=image_ids(h, w, noisy.device, dtype), return_dict=False)[0]
    return unpack(out, h, w)


def text_parts(max_length: int):
    """Flux's pieces for the caching conditioner (trainer/families/dit/conditioner.py)."""
    from ..dit.conditioner import TextParts
    return TextParts(
        t5=lambda toks, encs, captions, device: (encode_t5(toks[1], encs[1], captions, device, max_length),),
        clip=lambda toks, encs, captions, device: (encode_clip(toks[0], encs[0], captions, device),),
        cond=lambda t5, clip: FluxCond(t5=t5[0], pooled=clip[0]), t5_index=1)

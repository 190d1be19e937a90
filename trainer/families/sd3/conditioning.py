"""SD3's caption conditioning and denoiser call, as StableDiffusion3Pipeline does them.

Captions: CLIP-L and CLIP-G penultimate hidden states, concatenated on the feature axis and zero-padded to
T5's width, then T5's last hidden state appended on the token axis (zeros of 256 tokens when T5 is left out);
pooled: CLIP-L's and CLIP-G's projected pooled outputs concatenated. The transformer takes latents unpacked
and the timestep on the 0–1000 scale (σ × 1000).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..dit.text import clip_outputs, t5_hidden

T5_TOKENS = 256


@dataclass
class SD3Cond:
    hidden: torch.Tensor   # [B, 77 + T, joint width]
    pooled: torch.Tensor   # [B, pooled width]


def encode_t5(tokenizer, encoder, captions: list[str], device, width: int,
              max_length: int = T5_TOKENS) -> torch.Tensor:
    """T5's hidden states (cacheable), or zeros of `width` when the model runs without T5."""
    if encoder is None:
        return torch.zeros(len(captions), max_length, width, device=device)
    return t5_hidden(tokenizer, encoder, captions, max_length, device)[0]


def encode_clip(tokenizers, text_encoders, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLIP-L ‖ CLIP-G penultimate hidden states [B, 77, L + G], their pooled outputs concatenated)."""
    hidden_l, pooled_l = clip_outputs(tokenizers[0], text_encoders[0], captions, device, hidden_layer=-2)
    hidden_g, pooled_g = clip_outputs(tokenizers[1], text_encoders[1], captions, device, hidden_layer=-2)
    return torch.cat([hidden_l, hidden_g], dim=-1), torch.cat([pooled_l, pooled_g], dim=-1)


def combine(t5: torch.Tensor, clip_hidden: torch.Tensor, pooled: torch.Tensor) -> SD3Cond:
    clip = F.pad(clip_hidden, (0, t5.shape[-1] - clip_hidden.shape[-1]))
    return SD3Cond(hidden=torch.cat([clip, t5.to(clip.dtype)], dim=-2), pooled=pooled)


def encode(tokenizers, text_encoders, captions: list[str], device, joint_width: int,
           max_length: int = T5_TOKENS, t5: torch.Tensor | None = None) -> SD3Cond:
    """`t5` given (from a cache) skips the T5 encoder."""
    if t5 is None:
        t5 = encode_t5(tokenizers[2], text_encoders[2], captions, device, joint_width, max_length)
    return combine(t5, *encode_clip(tokenizers, text_encoders, captions, device))


def text_parts(joint_width: int, max_length: int = T5_TOKENS):
    """SD3's pieces for the caching conditioner: T5 (or its zeros) cached, CLIP-L/G as the caching allows."""
    from ..dit.conditioner import TextParts
    return TextParts(
        t5=lambda toks, encs, captions, device: (encode_t5(toks[2], encs[2], captions, device, joint_width,
                                                           max_length),),
        clip=lambda toks, encs, captions, device: encode_clip(toks, encs, captions, device),
        cond=lambda t5, clip: combine(t5[0], *clip), t5_index=2)


def predict(transformer, noisy: torch.Tensor, sigmas: torch.Tensor, cond: SD3Cond) -> torch.Tensor:
    dtype = noisy.dtype
    return transformer(hidden_states=noisy, timestep=(sigmas * 1000).to(dtype),
                       encoder_hidden_states=cond.hidden.to(dtype), pooled_projections=cond.pooled.to(dtype),
                       return_dict=False)[0]

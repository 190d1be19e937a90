"""Chroma's caption conditioning and denoiser call, as ChromaPipeline does them: T5 only, run with its
attention mask; the transformer attends to the caption tokens plus one padding token (the mask is extended
by one, then by ones for the image tokens). No pooled CLIP, no guidance input: Chroma computes every block's
modulation from the timestep in its distilled guidance network. Latents are packed as Flux's.

The mask reaches attention as booleans: the installed ChromaPipeline passes it as floats, which
scaled_dot_product_attention adds as a bias instead of masking (diffusers issue #12116 and its fix)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dit.text import t5_hidden
from ..flux.conditioning import image_ids, pack, unpack


@dataclass
class ChromaCond:
    t5: torch.Tensor    # [B, T, width] (cacheable together with the mask)
    mask: torch.Tensor  # [B, T]: 1 for the caption's tokens and the first padding token


def encode(tokenizers, text_encoders, captions: list[str], device, max_length: int = 512) -> ChromaCond:
    hidden, tokenizer_mask = t5_hidden(tokenizers[0], text_encoders[0], captions, max_length, device, masked=True)
    lengths = tokenizer_mask.sum(dim=1, keepdim=True)
    mask = (torch.arange(tokenizer_mask.shape[1], device=device)[None, :] <= lengths).to(hidden.dtype)
    return ChromaCond(t5=hidden, mask=mask)


def predict(transformer, noisy: torch.Tensor, sigmas: torch.Tensor, cond: ChromaCond) -> torch.Tensor:
    b, _, h, w = noisy.shape
    dtype = noisy.dtype
    tokens = pack(noisy)
    mask = torch.cat([cond.mask.to(torch.bool), torch.ones(b, tokens.shape[1], dtype=torch.bool,
                                                           device=noisy.device)], dim=1)
    out = transformer(hidden_states=tokens, timestep=sigmas.to(dtype), encoder_hidden_states=cond.t5.to(dtype),
                      txt_ids=torch.zeros(cond.t5.shape[1], 3, device=noisy.device, dtype=dtype),
                      img_ids=image_ids(h, w, noisy.device, dtype), attention_mask=mask, return_dict=False)[0]
    return unpack(out, h, w)


def text_parts(max_length: int):
    """Chroma's pieces for the caching conditioner: T5 only (hidden states and mask, both cached)."""
    from ..dit.conditioner import TextParts

    def t5(toks, encs, captions, device):
        cond = encode(toks, encs, captions, device, max_length)
        return cond.t5, cond.mask

    return TextParts(t5=t5, clip=lambda *_: (), cond=lambda t5_parts, _: ChromaCond(*t5_parts), t5_index=0)

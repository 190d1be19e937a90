"""Caption encoders shared by the transformer families, called the way their diffusers pipelines call them
(tests compare with each pipeline's encode_prompt). T5 outputs depend only on the caption, so they are what a
text cache stores; the CLIP outputs are recomputed when a CLIP LoRA trains."""
from __future__ import annotations

import torch


def t5_hidden(tokenizer, encoder, captions: list[str], max_length: int, device,
              masked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state [B, max_length, width], the tokenizer's attention mask [B, max_length]). Flux and SD3
    run T5 without the mask (as their pipelines do); Chroma masks the padding (masked=True)."""
    tokens = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    mask = tokens.attention_mask.to(device)
    hidden = encoder(tokens.input_ids.to(device), attention_mask=mask if masked else None,
                     output_hidden_states=False)[0]
    return hidden, mask


def clip_outputs(tokenizer, encoder, captions: list[str], device, hidden_layer: int | None = None):
    """(hidden states of `hidden_layer` or None, pooled output): CLIP padded to its 77 tokens."""
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    out = encoder(tokens.input_ids.to(device), output_hidden_states=hidden_layer is not None)
    pooled = out[0] if hasattr(out, "text_embeds") else out.pooler_output
    hidden = out.hidden_states[hidden_layer] if hidden_layer is not None else None
    return hidden, pooled

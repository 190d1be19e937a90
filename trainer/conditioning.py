"""How captions become denoiser conditioning for the CLIP-conditioned UNet families (SD 1.x/2.x: one CLIP
encoder; SDXL: two encoders, penultimate hidden states, a pooled embedding). What differs between them is
the family's data (trainer/families/sd.py: hidden_layer, pooled_from); the SD adapter builds this class."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import offload
from .families import family


def unwrap(module):
    """The model inside a DistributedDataParallel wrapper (for attribute access)."""
    return getattr(module, "module", module)


def text_encoder_layers_used(arch: str, encoder_index: int, num_layers: int, clip_skip: int = 1) -> int:
    """How many of a text encoder's transformer layers reach the denoiser (FamilySpec.text_layers_used)."""
    return family(arch).text_layers_used(encoder_index, num_layers, clip_skip)


class TextConditioner:
    """Encodes captions for the UNet. When no text encoder is trained, results are cached per caption string,
    which is exact whatever caption shuffling or dropout produced the string. The loop fills the cache before
    training (`precompute`) and parks the encoders; a caption it did not foresee borrows them back."""

    def __init__(self, arch: str, tokenizers: Sequence, text_encoders: Sequence, cache: bool, clip_skip: int = 1):
        self.arch = arch
        self.family = family(arch)
        self.clip_skip = clip_skip
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = {} if cache else None

    def token_ids(self, captions: Sequence[str], device) -> list[torch.Tensor]:
        return [tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device) for tok in self.tokenizers]

    def _encode(self, captions: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = self.token_ids(captions, device)
        if self.family.pooled_from is None:  # one encoder, its last layer (or clip skip's earlier one)
            encoder = self.text_encoders[0]
            if self.clip_skip <= 1:
                return encoder(ids[0])[0], None
            # Kohya/A1111 clip skip: an earlier layer's output, through the final layer norm as the last one is.
            hidden = encoder(ids[0], output_hidden_states=True).hidden_states[-self.clip_skip]
            return unwrap(encoder).final_layer_norm(hidden), None
        hidden, pooled = [], None
        for i, (enc, tok_ids) in enumerate(zip(self.text_encoders, ids)):
            out = enc(tok_ids, output_hidden_states=True)
            hidden.append(out.hidden_states[self.family.hidden_layer])  # SDXL: the penultimate layer of both
            if i == self.family.pooled_from:
                pooled = out.text_embeds  # the projected pooled output (SDXL: of the second encoder)
        return torch.cat(hidden, dim=-1), pooled

    def precompute(self, captions: Sequence[str], device) -> None:
        """Cache the outputs of every caption not cached yet. Each is encoded alone, as the latent cache encodes
        each crop alone: its outputs are then a function of the caption, not of the others a run happens to
        have (a batched matmul rounds differently), and memory stays that of one caption."""
        with torch.no_grad():
            for caption in sorted(set(captions) - self.cache.keys()):
                hidden, pooled = self._encode([caption], device)
                self.cache[caption] = (hidden[0], None if pooled is None else pooled[0])

    def encode(self, captions: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cache is None:
            return self._encode(captions, device)
        if any(c not in self.cache for c in captions):
            # Not foreseen by the loop's precompute: the parked encoders are borrowed for it, then parked again.
            with offload.on_device(self.text_encoders, device):
                self.precompute(captions, device)
        hidden = torch.stack([self.cache[c][0] for c in captions])
        pooled = None if self.family.pooled_from is None else torch.stack([self.cache[c][1] for c in captions])
        return hidden, pooled

    def unet_kwargs(self, batch, hidden: torch.Tensor, pooled: torch.Tensor | None) -> dict:
        """The UNet's conditioning arguments (the SD adapter's denoiser_kwargs)."""
        from .families import adapter_for

        return adapter_for(self.family).denoiser_kwargs(batch, hidden, pooled)

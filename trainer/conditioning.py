"""Architecture adapters: how captions become UNet conditioning for SD 1.x/2.x (one CLIP encoder) and SDXL
(two encoders, penultimate hidden states, a pooled embedding and size/crop "time ids")."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import offload


def unwrap(module):
    """The model inside a DistributedDataParallel wrapper (for attribute access)."""
    return getattr(module, "module", module)


def text_encoder_layers_used(arch: str, encoder_index: int, num_layers: int, clip_skip: int = 1) -> int:
    """How many of a text encoder's transformer layers, counted from the first, reach the UNet as
    TextConditioner._encode reads them. The layers after these get no gradient, so a LoRA on them would be
    exported as all-zero up-weights that only cost loading time."""
    if arch == "sdxl":
        # Hidden states come from the penultimate layer of both encoders; only the second's pooled embedding
        # (through its final layer) conditions the UNet too.
        return num_layers if encoder_index == 1 else num_layers - 1
    return num_layers - (max(clip_skip, 1) - 1)  # hidden_states[-clip_skip] is the output of this many layers


class TextConditioner:
    """Encodes captions for the UNet. When no text encoder is trained, results are cached per caption string,
    which is exact whatever caption shuffling or dropout produced the string. The loop fills the cache before
    training (`precompute`) and parks the encoders; a caption it did not foresee borrows them back."""

    def __init__(self, arch: str, tokenizers: Sequence, text_encoders: Sequence, cache: bool, clip_skip: int = 1):
        self.arch = arch
        self.clip_skip = clip_skip
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = {} if cache else None

    def token_ids(self, captions: Sequence[str], device) -> list[torch.Tensor]:
        return [tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device) for tok in self.tokenizers]

    def _encode(self, captions: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = self.token_ids(captions, device)
        if self.arch != "sdxl":
            encoder = self.text_encoders[0]
            if self.clip_skip <= 1:
                return encoder(ids[0])[0], None
            # Kohya/A1111 clip skip: an earlier layer's output, through the final layer norm as the last one is.
            hidden = encoder(ids[0], output_hidden_states=True).hidden_states[-self.clip_skip]
            return unwrap(encoder).final_layer_norm(hidden), None
        hidden, pooled = [], None
        for enc, tok_ids in zip(self.text_encoders, ids):
            out = enc(tok_ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer of both encoders
            pooled = getattr(out, "text_embeds", None)  # the projected pooled output of the second encoder
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
        pooled = None if self.arch != "sdxl" else torch.stack([self.cache[c][1] for c in captions])
        return hidden, pooled

    def unet_kwargs(self, batch, hidden: torch.Tensor, pooled: torch.Tensor | None) -> dict:
        kwargs = {"encoder_hidden_states": hidden}
        if self.arch == "sdxl":
            # (original h, w) + (crop top, left) + (target h, w) per example, as SDXL was trained with.
            time_ids = torch.tensor([[*o, *c, *t] for o, c, t in zip(batch.original_sizes, batch.crop_top_lefts,
                                                                    batch.target_sizes)],
                                    device=hidden.device, dtype=hidden.dtype)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return kwargs

"""Caption conditioning for the transformer families, with T5's outputs cached.

T5-XXL never trains, so its outputs are a function of the caption: they are cached per caption (each encoded
alone, so a caption's tensors do not depend on which others share its batch) whether or not the CLIP encoders
train. When nothing trains (`cache`), the CLIP outputs are cached the same way and the loop may park every
encoder. A family supplies its `TextParts`: how T5 and CLIP outputs are computed and put together."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ... import offload

Parts = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class TextParts:
    t5: Callable[[list, list, list[str], torch.device], Parts]    # (tokenizers, encoders, captions, device)
    clip: Callable[[list, list, list[str], torch.device], Parts]  # () for a family without CLIP
    cond: Callable[[Parts, Parts], object]                         # stacked T5 parts, CLIP parts → cond
    t5_index: int                                                  # T5's place among the text encoders


class FlowTextConditioner:
    def __init__(self, parts: TextParts, tokenizers: Sequence, text_encoders: Sequence, cache: bool):
        self.parts = parts
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.t5_cache: dict[str, Parts] = {}
        self.cache: dict[str, Parts] | None = {} if cache else None  # CLIP outputs, when no encoder trains

    def _fill(self, store: dict[str, Parts], compute, captions: Sequence[str], device) -> None:
        with torch.no_grad():
            for caption in sorted(set(captions) - store.keys()):
                store[caption] = tuple(t[0] for t in compute(self.tokenizers, self.text_encoders, [caption], device))

    def _stacked(self, store: dict[str, Parts], compute, captions: Sequence[str], device) -> Parts:
        if any(c not in store for c in captions):
            # Not foreseen by precompute: the (possibly parked) encoders are borrowed for it.
            with offload.on_device([e for e in self.text_encoders if e is not None], device):
                self._fill(store, compute, captions, device)
        return tuple(torch.stack(parts) for parts in zip(*(store[c] for c in captions)))

    def precompute(self, captions: Sequence[str], device) -> None:
        self._fill(self.t5_cache, self.parts.t5, captions, device)
        if self.cache is not None:
            self._fill(self.cache, self.parts.clip, captions, device)

    def encode(self, captions: Sequence[str], device):
        captions = list(captions)
        t5 = self._stacked(self.t5_cache, self.parts.t5, captions, device)
        if self.cache is not None:
            clip = self._stacked(self.cache, self.parts.clip, captions, device) if self._has_clip else ()
        else:
            clip = self.parts.clip(self.tokenizers, self.text_encoders, captions, device)
        return self.parts.cond(t5, clip)

    @property
    def _has_clip(self) -> bool:
        return len(self.text_encoders) > 1

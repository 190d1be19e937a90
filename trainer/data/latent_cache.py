"""Cached VAE latents: encode each training crop once, keep it in memory and optionally on disk.

A disk entry is named by a hash of everything that decides the latent: the image file's bytes, the bucket,
the crop, the flip, the VAE and the preprocessing version. A changed image, bucket or VAE therefore misses
the cache and is encoded again; stale entries are never read.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from ..atomic import write_bytes_atomic
from .errors import DatasetError

EncodeFn = Callable[[torch.Tensor], torch.Tensor]

# Bump when resizing/cropping changes, so latents made the old way are not reused.
_PREPROCESSING_VERSION = 1
_TENSOR_NAME = "latents"


class LatentCache:
    """Latents by key, in memory and (when disk_dir is given) in `disk_dir/<key>.safetensors`.

    encode_fn maps pixels [B, 3, H, W] in [-1, 1] to scaled latents [B, C, h, w]; vae_id names the VAE
    (for example its weights hash) so latents of another VAE are never mixed in. Latents are kept in `dtype`
    (the training's weight dtype: half the memory and disk of fp32 under fp16/bf16); the dtype is part of the
    key, so a cache written for another precision is never read back as this one.
    """

    def __init__(self, encode_fn: EncodeFn, vae_id: str, disk_dir: Path | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.encode_fn = encode_fn
        self.vae_id = vae_id
        self.dtype = dtype
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._memory: dict[str, torch.Tensor] = {}

    def key(self, content_sha256: str, bucket: tuple[int, int], crop_top_left: tuple[int, int],
            flipped: bool) -> str:
        """The cache key of one training crop: a hex digest of every input that decides its latent."""
        fields = {"content": content_sha256, "bucket": list(bucket), "crop": list(crop_top_left),
                  "flip": flipped, "vae": self.vae_id, "version": _PREPROCESSING_VERSION}
        if self.dtype != torch.float32:  # fp32 keys stay as they were, so existing caches are still found
            fields["dtype"] = str(self.dtype).removeprefix("torch.")
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        """The latent [C, h, w] stored under key, from memory or disk; None when it was never encoded."""
        latent = self._memory.get(key)
        if latent is None and self.disk_dir is not None:
            latent = self._read_disk(key)
            if latent is not None:
                self._memory[key] = latent
        return latent

    def encode(self, keys: Sequence[str], pixels: torch.Tensor) -> None:
        """Run encode_fn on crops and store each latent under its key. Each crop is encoded alone: a batched
        convolution rounds differently from a single one, so a latent encoded beside others would differ in
        the last bits from the same latent re-encoded after a resume found only part of the cache on disk."""
        if len(pixels) != len(keys):
            raise DatasetError(f"{len(keys)} cache keys for {len(pixels)} images")
        for key, crop in zip(keys, pixels):
            with torch.no_grad():
                latents = self.encode_fn(crop.unsqueeze(0))
            if latents.ndim != 4 or latents.shape[0] != 1:
                raise DatasetError(f"the VAE encode function returned shape {tuple(latents.shape)} for one image; "
                                   "expected [1, C, h, w]")
            latent = latents[0].detach().to("cpu", self.dtype).contiguous()
            self._memory[key] = latent
            if self.disk_dir is not None:
                self._write_disk(key, latent)

    def _disk_path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f"{key}.safetensors"

    def _read_disk(self, key: str) -> torch.Tensor | None:
        path = self._disk_path(key)
        try:
            return load(path.read_bytes())[_TENSOR_NAME]
        except (OSError, SafetensorError, KeyError):
            # Absent, or damaged (a disk error, a foreign file): a miss, so it gets encoded and rewritten.
            return None

    def _write_disk(self, key: str, latent: torch.Tensor) -> None:
        assert self.disk_dir is not None
        write_bytes_atomic(self._disk_path(key), save({_TENSOR_NAME: latent}, metadata={"vae_id": self.vae_id}))

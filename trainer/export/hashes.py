"""The model hashes A1111's additional-networks extension shows for a .safetensors LoRA, precomputed at save
time as Kohya does (metadata keys sshs_model_hash and sshs_legacy_hash)."""
from __future__ import annotations

import hashlib
from typing import Mapping

import safetensors.torch
import torch

# A1111's legacy model hash reads 64 KiB at 1 MiB into the file.
_LEGACY_OFFSET = 0x100000
_LEGACY_LENGTH = 0x10000


def addnet_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(model hash, legacy hash) of the file these tensors and metadata make.

    The model hash is the sha256 of the tensor bytes only (everything after the header), so editing metadata
    does not change it. The legacy hash is A1111's old file hash (sha256 of 64 KiB at 1 MiB, first 8 hex
    digits) taken over the file re-serialised with only its ss_* metadata, which is what the extension
    recomputes when a file carries other metadata.
    """
    training_metadata = {key: value for key, value in metadata.items() if key.startswith("ss_")}
    data = safetensors.torch.save(dict(tensors), metadata=training_metadata)
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length:]).hexdigest()
    legacy_hash = hashlib.sha256(data[_LEGACY_OFFSET:_LEGACY_OFFSET + _LEGACY_LENGTH]).hexdigest()[:8]
    return model_hash, legacy_hash

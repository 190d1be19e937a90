"""sha256 of a file, read in chunks: model hashes (metadata), latent-cache keys, upload deduplication and the
LoRA hashes A1111 shows. Torch-free, so the UI uses it too."""
from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike, skip_safetensors_header: bool = False) -> str:
    """Hex sha256 of the file's bytes; with skip_safetensors_header, of its tensor data only (what A1111 calls
    a LoRA's "addnet" hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if skip_safetensors_header:
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

"""Writing trained textual-inversion embeddings: the .safetensors layout that diffusers, ComfyUI and
AUTOMATIC1111 read ({"emb_params": [n, dim]} for SD 1.x/2.x; {"clip_l", "clip_g"} for SDXL), with modelspec
metadata, and optionally A1111's own pickled .pt layout for SD 1.x/2.x."""
from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import safetensors.torch
import torch

from ..atomic import write_atomically
from ..families import FAMILIES, family
from .lora_file import SAVE_DTYPES
from .metadata import build_modelspec_metadata

# The file key of each text encoder's vectors, in pipeline order.
EMBEDDING_KEYS: dict[str, tuple[str, ...]] = {f.id: tuple(te.embedding_key for te in f.text_encoders)
                                              for f in FAMILIES.values() if f.refusal("textual_inversion") is None}
# A1111 files record the id of "*" in the CLIP vocabulary as the placeholder the vectors stand for.
A1111_PLACEHOLDER_ID = 265
# The zip entries AUTOMATIC1111's safe-unpickle check (modules/safe.py) lets through: "<folder>/data.pkl",
# "<folder>/version" and "<folder>/data/<n>". torch.save adds bookkeeping records (.format_version,
# .storage_alignment, byteorder, .data/serialization_id) that A1111 refuses, and torch.load reads without them.
A1111_ALLOWED_ENTRY = re.compile(r"^[^/]+/(data\.pkl|version|data/\d+)$")


@dataclass
class EmbeddingExportInfo:
    """What an embedding file records besides its vectors."""
    token: str
    title: str                               # the output name
    prediction_type: str = "epsilon"         # "epsilon" | "v_prediction"
    resolution: tuple[int, int] = (512, 512)  # (width, height)
    timestamp: float = 0.0                   # unix seconds the file was made
    step: int = 0
    base_model_name: str = ""
    base_model_hash: str = ""                # sha256 of the base model file, "" when unknown
    clip_skip: int | None = None


def embedding_tensors(arch: str, vectors: Sequence[torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """{file key: [n, dim] tensor on the CPU in `dtype`}; `vectors` holds one [n, dim] tensor per text encoder."""
    if arch not in EMBEDDING_KEYS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(EMBEDDING_KEYS)}")
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"cannot save an embedding as {dtype}; expected one of {', '.join(map(str, SAVE_DTYPES))}")
    keys = EMBEDDING_KEYS[arch]
    if len(vectors) != len(keys):
        raise ValueError(f"{arch} has {len(keys)} text encoder(s), got vectors for {len(vectors)}")
    if len({v.shape[0] for v in vectors}) != 1 or any(v.dim() != 2 for v in vectors):
        raise ValueError(f"every text encoder needs the same number of [n, dim] vectors, got "
                         f"{[tuple(v.shape) for v in vectors]}")
    return {key: v.detach().to("cpu", dtype).contiguous() for key, v in zip(keys, vectors)}


def embedding_metadata(arch: str, info: EmbeddingExportInfo) -> dict[str, str]:
    metadata = build_modelspec_metadata(arch=arch, adapter="textual-inversion", title=info.title,
                                        resolution=info.resolution, prediction_type=info.prediction_type,
                                        timestamp=info.timestamp, clip_skip=info.clip_skip)
    metadata["modelspec.trigger_phrase"] = info.token
    return metadata


def save_embedding(path: str | os.PathLike, *, arch: str, vectors: Sequence[torch.Tensor],
                   info: EmbeddingExportInfo, dtype: torch.dtype = torch.float16) -> Path:
    """Write the embedding .safetensors atomically; returns its path."""
    tensors = embedding_tensors(arch, vectors, dtype)
    metadata = embedding_metadata(arch, info)
    return write_atomically(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))


def save_embedding_a1111(path: str | os.PathLike, *, arch: str, vectors: Sequence[torch.Tensor],
                         info: EmbeddingExportInfo, dtype: torch.dtype = torch.float16) -> Path:
    """Write AUTOMATIC1111's .pt layout (SD 1.x/2.x only: it holds one encoder's vectors) atomically."""
    if len(EMBEDDING_KEYS[arch]) != 1:
        raise ValueError(f"the A1111 .pt layout holds one text encoder's vectors; {family(arch).label} embeddings "
                         f"are read from the .safetensors file ({' / '.join(EMBEDDING_KEYS[arch])})")
    (tensor,) = embedding_tensors(arch, vectors, dtype).values()
    data = {
        "string_to_token": {"*": A1111_PLACEHOLDER_ID},
        "string_to_param": {"*": tensor},
        "name": info.token,
        "step": info.step,
        # A1111 stores the short (10-hex) form of the checkpoint's sha256 here.
        "sd_checkpoint": info.base_model_hash[:10] or None,
        "sd_checkpoint_name": info.base_model_name,
    }
    archive = a1111_archive(data)
    return write_atomically(path, lambda tmp: tmp.write_bytes(archive))


def a1111_archive(data: dict) -> bytes:
    """torch.save's zip of `data` with only the entries A1111 allows. Its pickle refers to nothing but
    tensor-rebuilding globals (torch._utils._rebuild_tensor_v2, torch.HalfStorage/FloatStorage, OrderedDict),
    all on A1111's list; the tensors are stored uncompressed, as torch.load needs."""
    saved = io.BytesIO()
    torch.save(data, saved)
    kept = io.BytesIO()
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(kept, "w", zipfile.ZIP_STORED) as target:
        for entry in source.infolist():
            if A1111_ALLOWED_ENTRY.match(entry.filename):
                target.writestr(entry, source.read(entry))
    return kept.getvalue()

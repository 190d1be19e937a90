"""A .safetensors writer that streams: the header first (computed from shapes and dtypes alone), then each
tensor in turn, converted (to the CPU, to the save dtype) only while it is written.

Why not safetensors.torch.save_file: it needs every tensor already on the CPU in its final dtype, so saving
a GPU model, or an fp32 model as fp16, first builds a second copy of all weights (about 7 GB for an fp16
SDXL checkpoint, 14 GB in fp32). Here the extra memory is one tensor at a time. The file layout is the
published format (8-byte little-endian header length, JSON header padded with spaces to 8 bytes, then the
tensor bytes back to back in header order), read by safetensors, diffusers, ComfyUI and AUTOMATIC1111.
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def _saved_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def safetensors_header(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
                       dtype: torch.dtype | None = None) -> bytes:
    """The length prefix and JSON header of a file holding `tensors` (floating ones cast to `dtype`)."""
    return header_for_layout(((name, tuple(t.shape), _saved_dtype(t, dtype)) for name, t in tensors.items()),
                             metadata)


def header_for_layout(layout: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
                      metadata: Mapping[str, str] | None) -> bytes:
    """The length prefix and JSON header for tensors known by (name, shape, dtype) alone, in file order: a
    file can be rewritten one tensor at a time (trainer.lora_tools merges into a checkpoint this way)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape, saved in layout:
        if saved not in _DTYPE_NAMES:
            raise ValueError(f"cannot save tensor {name!r} of dtype {saved} in a .safetensors file")
        size = math.prod(shape) * saved.itemsize
        header[name] = {"dtype": _DTYPE_NAMES[saved], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(text)) + text


DTYPES_BY_NAME = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


def write_tensor_bytes(out, tensor: torch.Tensor) -> None:
    """One tensor's data as the format stores it (little-endian, row-major), into an open binary file."""
    if sys.byteorder != "little":  # the format is little-endian; torch's memory follows the machine
        raise RuntimeError("writing .safetensors files needs a little-endian machine")
    out.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def write_safetensors_streaming(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                                metadata: Mapping[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write `tensors` to `path` (not atomically: callers pass a temporary name from trainer.atomic)."""
    path = Path(path)
    with open(path, "wb") as out:
        out.write(safetensors_header(tensors, metadata, dtype))
        for tensor in tensors.values():
            saved = tensor.detach().to("cpu", _saved_dtype(tensor, dtype))
            write_tensor_bytes(out, saved)
            del saved  # a converted copy lives only while it is written
    return path

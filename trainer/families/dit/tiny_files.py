"""Writing a tiny transformer-family model: a diffusers folder, the all-in-one single file ComfyUI and Stability
ship, or the separate files Flux users keep (transformer, ae, clip_l, t5xxl). trainer/models/tiny.py checks the
path and says the model makes noise (README.txt); this writes the weights."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...models.errors import ModelError
from ...models.tiny import TINY_NOTICE
from .single_file import Layout, write_single_files

FORMATS = ("diffusers", "single-file", "split-files")


def write_tiny(layout: Layout, pipeline_class: type, components: Mapping[str, Any], out: Path, fmt: str) -> Path:
    """`out` as a diffusers folder (into an existing empty folder), one all-in-one .safetensors, or a folder of
    separate files."""
    out = Path(out)
    notice = {"kiln_notice": TINY_NOTICE}
    if fmt == "single-file":
        return write_single_files(layout, components, out, all_in_one=True, metadata=notice)["model"]
    if fmt == "split-files":
        write_single_files(layout, components, out, all_in_one=False, metadata=notice)
        return out
    if fmt == "diffusers":
        pipeline_class(**components).save_pretrained(out, safe_serialization=True)
        return out
    raise ModelError(f"unknown tiny-model format {fmt!r}; expected one of {', '.join(FORMATS)}")

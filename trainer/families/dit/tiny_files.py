"""Writing a tiny transformer-family model to disk: a diffusers folder, the all-in-one single file ComfyUI and
Stability ship, or the separate files Flux users keep (transformer, ae, clip_l, t5xxl). Never over an existing
path; every file says it makes noise."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...atomic import write_folder_atomically
from ...models.errors import ModelError
from ...models.tiny import TINY_NOTICE
from .single_file import Layout, write_single_files

FORMATS = ("diffusers", "single-file", "split-files")


def save_tiny(layout: Layout, pipeline_class: type, components: Mapping[str, Any], out: Path | str,
              fmt: str = "diffusers") -> Path:
    """`out` as a diffusers folder, one all-in-one .safetensors, or a folder of separate files."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ModelError(f"unknown tiny-model format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if out.exists():
        raise ModelError(f"refusing to overwrite {out}: it already exists")
    if not out.parent.is_dir():
        raise ModelError(f"cannot write {out}: folder {out.parent} does not exist")
    notice = {"kiln_notice": TINY_NOTICE}
    if fmt == "single-file":
        if out.suffix != ".safetensors":
            raise ModelError(f"a single-file model must end in .safetensors, got {out}")
        return write_single_files(layout, components, out, all_in_one=True, metadata=notice)["model"]
    if fmt == "split-files":
        def write_parts(folder: Path) -> None:
            write_single_files(layout, components, folder, all_in_one=False, metadata=notice)
            (folder / "README.txt").write_text(TINY_NOTICE + "\n")
        return write_folder_atomically(out, write_parts)

    def write(folder: Path) -> None:
        pipeline_class(**components).save_pretrained(folder, safe_serialization=True)
        (folder / "README.txt").write_text(TINY_NOTICE + "\n")

    return write_folder_atomically(out, write)

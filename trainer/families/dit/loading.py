"""Load a transformer-family model from a diffusers folder or its single files (offline either way)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...models.errors import ModelError
from .components import vae_from_state_dict
from .single_file import Layout, load_single_file, read_safetensors


def load_components(layout: Layout, pipeline_class: type, base: str, files: Mapping[str, str] | None = None,
                    dtype: torch.dtype = torch.float32, t5_tokenizer: str = "") -> tuple[dict[str, Any], Path]:
    """(components, config folder) of the model at `base`: a diffusers folder (read with the family's
    pipeline, local files only) or a .safetensors file with `files` naming the parts it lacks."""
    path = Path(base).expanduser()
    tokenizer_dir = Path(t5_tokenizer).expanduser() if t5_tokenizer else None
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{path} is a folder without model_index.json; expected a diffusers model folder")
        absent = _absent_optional_parts(layout.family, path)
        try:
            pipe = pipeline_class.from_pretrained(path, local_files_only=True, torch_dtype=dtype, **absent)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelError(f"cannot load the {layout.family} diffusers model in {path}: {e}") from e
        components = {**dict(pipe.components), **absent}
        components.pop("scheduler", None)
        vae_file = (files or {}).get("vae") or ""
        if vae_file:  # [model] vae replaces the folder's own VAE
            weights, _ = read_safetensors(Path(vae_file).expanduser(), "[model] vae file")
            components["vae"] = vae_from_state_dict(weights, path, vae_file, dtype)
        return components, path
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"{path}: a {layout.family} model is a diffusers folder or a .safetensors file")
    components, config_dir = load_single_file(layout, path, files or {}, dtype, tokenizer_dir)
    return components, config_dir


def _absent_optional_parts(family_id: str, folder: Path) -> dict[str, None]:
    """None for each text encoder (and its tokenizer) the folder lacks and the family runs without: from_pretrained
    refuses a folder missing any of the pipeline's components unless it is passed (as None). A missing one the
    family needs is refused here in one line (the same line `trainer check` gives)."""
    from .. import FAMILIES
    from ..folder_parts import absent_text_encoders, missing_text_encoder_problem

    spec = FAMILIES[family_id]
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder}/model_index.json is not readable JSON ({e})") from e
    problem = missing_text_encoder_problem(spec, folder, index)
    if problem:
        raise ModelError(problem)
    return {name: None for te in absent_text_encoders(spec, index) for name in (te.component, te.tokenizer)}

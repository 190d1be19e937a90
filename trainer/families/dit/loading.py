"""Load a transformer-family model from a diffusers folder or its single files (offline either way)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...models.errors import ModelError
from ...quantize_load import FOLDER_WHY, SINGLE_FILE_WHY, QuantizedLoad, load_quantized_component, quantized_after
from .components import vae_from_state_dict
from .single_file import Layout, load_single_file, read_safetensors


def load_components(layout: Layout, pipeline_class: type, base: str, files: Mapping[str, str] | None = None,
                    dtype: torch.dtype = torch.float32, t5_tokenizer: str = "",
                    given: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """(components, config folder) of the model at `base`: a diffusers folder (read with the family's
    pipeline, local files only; `given` components, made already, are taken as they are) or a .safetensors
    file with `files` naming the parts it lacks."""
    path = Path(base).expanduser()
    tokenizer_dir = Path(t5_tokenizer).expanduser() if t5_tokenizer else None
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{path} is a folder without model_index.json; expected a diffusers model folder")
        absent = _absent_optional_parts(layout.family, path)
        try:
            pipe = pipeline_class.from_pretrained(path, local_files_only=True, torch_dtype=dtype, **absent,
                                                  **(given or {}))
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


def quantized_transformer(base: str, dtype: torch.dtype, quantize: QuantizedLoad | None) -> tuple[dict[str, Any], str]:
    """({"transformer": the diffusers folder's transformer quantized as it is read} for load_components to take
    as given, the load note), or ({}, the note why not) for a single file or weights not read tensor by tensor."""
    folder = Path(base).expanduser()
    if quantize is None:
        return {}, ""
    if not (folder / "model_index.json").is_file():
        return {}, quantized_after(quantize.kind, folder.name, SINGLE_FILE_WHY)
    import diffusers

    try:
        library_class = json.loads((folder / "model_index.json").read_text()).get("transformer", [None, None])[1]
        cls = getattr(diffusers, library_class or "", None)
        made = load_quantized_component(cls, folder, "transformer", quantize, dtype) if cls is not None else None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot load the transformer of the diffusers model in {folder}: {e}") from e
    if made is None:
        return {}, quantized_after(quantize.kind, f"{folder.name}/transformer", FOLDER_WHY)
    return {"transformer": made[0]}, made[1]


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

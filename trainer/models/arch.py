"""Which model family a checkpoint is, for the model loaders: the family layer's detection
(trainer/families/detect.py), with its errors as ModelError."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..families import FAMILIES, DetectionError, family_from_configs, family_from_keys, family_from_unet_config
from .errors import ModelError

ARCH_NAMES = {f.id: f.label for f in FAMILIES.values()}


def detect_arch_from_keys(keys: Iterable[str], source: str) -> str:
    """The family id from the key names of an original single-file checkpoint."""
    try:
        return family_from_keys(keys, source)
    except DetectionError as exc:
        raise ModelError(str(exc)) from None


def detect_arch_from_unet_config(unet_config: Mapping[str, Any], source: str,
                                 text_encoder_config: Mapping[str, Any] | None = None) -> str:
    """sd15 / sd2 / sdxl from a diffusers UNet config (and the text encoder's, for unusual widths)."""
    try:
        return family_from_unet_config(unet_config, source, text_encoder_config)
    except DetectionError as exc:
        raise ModelError(str(exc)) from None


def detect_arch_of_folder(path) -> str:
    """The family of a diffusers folder from model_index.json and its component configs."""
    import json
    from pathlib import Path

    path = Path(path)

    def read(name: str) -> dict:
        file = path / name
        return json.loads(file.read_text()) if file.is_file() else {}

    configs = {name: read(f"{name}/config.json") for name in ("unet", "transformer", "text_encoder")
               if (path / name / "config.json").is_file()}
    try:
        return family_from_configs(read("model_index.json"), configs, str(path))
    except DetectionError as exc:
        raise ModelError(str(exc)) from None


def detect_arch_of_source(base: str) -> str:
    """The family of a model source without loading weights (for `trainer check`): builtin ids by name, single
    files from their tensor names, diffusers folders from their configs. Hub ids raise ModelError."""
    from pathlib import Path

    from .loading import BUILTIN_MODELS

    if base in BUILTIN_MODELS:
        return BUILTIN_MODELS[base]
    path = Path(base).expanduser()
    if path.is_dir():
        return detect_arch_of_folder(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return detect_arch_from_keys(f.keys(), str(path))
    raise ModelError(f"{base}: the architecture is known only once the model is loaded")

"""Which model family a checkpoint is, for the model loaders: the family layer's detection
(trainer/families/detect.py), with its errors as ModelError."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..families import FAMILIES, DetectionError, family_from_keys, family_from_unet_config
from ..families.detect import family_of_source
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


def detect_arch_of_source(base: str) -> str:
    """The family of a model source without loading weights (for `trainer check`): builtin ids by name, single
    files from their tensor names, diffusers folders from their configs. Hub ids raise ModelError."""
    from ..config.schema import BUILTIN_MODELS

    try:
        return family_of_source(base, BUILTIN_MODELS)
    except DetectionError as exc:
        raise ModelError(str(exc)) from None

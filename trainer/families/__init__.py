"""Model families: one torch-free FamilySpec per family (spec.py; SD 1.x/2.x/SDXL in sd.py, SD 3 / Flux.1 /
Chroma in flow.py), how each is detected (detect.py), which job options apply to it (options.py), and — the
torch side, imported only by a run — its adapter (adapter.py: `adapter_for(family)`).

The engine asks the family; it never tests a family id itself. This package sits below trainer/config in the
import order and imports nothing of Kiln's above it. docs/architecture.md describes the interface."""
from __future__ import annotations

from importlib import import_module

from .detect import DetectionError, family_from_configs, family_from_keys, family_from_unet_config
from .flow import CHROMA, FLUX, MEMORY_VARIANTS, SD3, T5_XXL, T5_XXL_QUANTIZED
from .sd import SD2, SD15, SDXL
from .spec import DDPM, FLOW, FamilySpec, MemoryFacts, TextEncoderSpec

FAMILIES: dict[str, FamilySpec] = {f.id: f for f in (SD15, SD2, SDXL, SD3, FLUX, CHROMA)}
FAMILY_IDS: tuple[str, ...] = tuple(FAMILIES)
DEFAULT_FAMILY = SD15  # what sizes and metadata assume while a model's family is unknown
BUILTIN_TINY = {f"builtin:tiny-{f.id}": f.id for f in FAMILIES.values() if f.builtin_tiny}


def family(family_id: str) -> FamilySpec:
    """The spec of `family_id`; KeyError with the known ids for anything else."""
    try:
        return FAMILIES[family_id]
    except KeyError:
        raise KeyError(f"unknown model family {family_id!r}; expected one of {', '.join(FAMILY_IDS)}") from None


def family_of_version(ss_base_model_version: str) -> FamilySpec | None:
    """The family a LoRA file's ss_base_model_version names (Kohya writes e.g. "sd_v1", "sdxl_base_v1-0")."""
    for f in FAMILIES.values():
        if ss_base_model_version.startswith(f.ss_base_model_version):
            return f
    return None


_ADAPTERS: dict[str, object] = {}


def adapter_for(family_or_id):
    """The torch-side adapter of a family (one instance each): imports its module on first use."""
    spec = family_or_id if isinstance(family_or_id, FamilySpec) else family(family_or_id)
    if spec.id not in _ADAPTERS:
        module, _, name = spec.adapter.partition(":")
        try:
            cls = getattr(import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise NotImplementedError(f"{spec.label} ({spec.id}) has no training adapter in this build "
                                      f"({spec.adapter}: {exc})") from exc
        _ADAPTERS[spec.id] = cls(spec)
    return _ADAPTERS[spec.id]


__all__ = ["BUILTIN_TINY", "CHROMA", "DDPM", "DEFAULT_FAMILY", "DetectionError", "FAMILIES", "FAMILY_IDS", "FLOW",
           "FLUX", "FamilySpec", "MEMORY_VARIANTS", "MemoryFacts", "SD15", "SD2", "SD3", "SDXL", "TextEncoderSpec",
           "adapter_for", "family", "family_from_configs", "family_from_keys", "family_from_unet_config",
           "family_of_version"]

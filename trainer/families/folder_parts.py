"""Which text encoders a diffusers folder lacks, read from its model_index.json (torch-free: `trainer check`
and the folder loader both ask here, so check approves exactly the folders that load)."""
from __future__ import annotations

from pathlib import Path

from .spec import FamilySpec, TextEncoderSpec

# the [model] key that names a text encoder's separate file, by kind
_FILE_KEYS = {"clip-l": "clip_l", "openclip-g": "clip_g", "t5-xxl": "t5xxl"}


def absent_text_encoders(spec: FamilySpec, index: dict) -> list[TextEncoderSpec]:
    """The family's text encoders the folder's model_index.json omits or lists as [null, null] (what
    save_pretrained writes for a pipeline built with that component None)."""
    return [te for te in spec.text_encoders if not any(index.get(te.component) or ())]


def missing_text_encoder_problem(spec: FamilySpec, folder: Path, index: dict) -> str:
    """One line naming the first text encoder the family needs and the folder lacks, or "" when none."""
    needed = [te for te in absent_text_encoders(spec, index) if not te.optional]
    if not needed:
        return ""
    te = needed[0]
    return (f"{folder} has no {te.component} ({te.kind}) in model_index.json, and {spec.label} needs it; use a "
            f"diffusers folder that has it, or the model's .safetensors file with [model] "
            f"{_FILE_KEYS.get(te.kind, te.component)} naming the {te.kind} file")


def family_of_index(index: dict, families) -> FamilySpec | None:
    """The family whose pipeline the folder's model_index.json names (None: not a known one)."""
    name = index.get("_class_name") if isinstance(index, dict) else None
    return next((f for f in families if f.pipeline == name), None)

"""The fine-tune method's rules (torch-free; the training class is finetune.py)."""
from __future__ import annotations

from .spec import MethodSpec, show, typical_lr_warning


def _requirements(cfg) -> list[str]:
    """Fine-tune trains on captions alone: regularisation (class) images have no role in it."""
    return [f"dataset.concepts[{i}].is_regularization = true: method = \"finetune\" uses no regularisation "
            "images (use DreamBooth for prior preservation, or make it an instance concept)"
            for i, concept in enumerate(cfg.dataset.concepts) if concept.get("is_regularization")]


def _warnings(cfg) -> list[str]:
    warnings = typical_lr_warning(cfg, 5e-5, "high for a full fine-tune (1e-6 to 1e-5 is typical)")
    if cfg.finetune.stop_text_encoder_step and not cfg.finetune.train_text_encoder:
        warnings.append(f"{show(cfg, 'finetune.stop_text_encoder_step')} has no effect while "
                        "finetune.train_text_encoder = false")
    return warnings


FINETUNE = MethodSpec(
    name="finetune",
    sections=("finetune",),
    requirements=_requirements,
    warnings=_warnings,
    trains_lora=lambda cfg: False,
    trains_text_encoder=lambda cfg: bool(cfg.finetune.train_text_encoder),
    trains_full_unet=lambda cfg: True,
)

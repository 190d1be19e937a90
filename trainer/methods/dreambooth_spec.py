"""The DreamBooth method's rules, full fine-tune and DreamBooth-LoRA (torch-free; the training classes are in
dreambooth.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.values import format_value
from .spec import MethodSpec, required, typical_lr_warning


def _requirements(cfg) -> list[str]:
    needed = [("dreambooth.instance_prompt", f"method = {format_value(cfg.method)}")]
    if cfg.dreambooth.prior_preservation:
        needed.append(("dreambooth.class_prompt", "dreambooth.prior_preservation = true"))
    return required(cfg, needed)


def _warnings(cfg) -> list[str]:
    if cfg.dreambooth.use_lora:
        return typical_lr_warning(cfg, 1e-2, "unusually high for LoRA (1e-4 to 1e-3 is typical)")
    return typical_lr_warning(cfg, 5e-5, "high for full DreamBooth (1e-6 to 5e-6 is typical)")


@dataclass(frozen=True)
class _DreamBoothSpec(MethodSpec):
    def planned_dataset(self, cfg):
        """The subject images plus the class images a run will use or generate first."""
        from ..dreambooth import planned_index

        return planned_index(cfg)


DREAMBOOTH = _DreamBoothSpec(
    name="dreambooth",
    sections=("dreambooth", "lora"),  # [lora] shapes DreamBooth-LoRA
    requirements=_requirements,
    warnings=_warnings,
    trains_lora=lambda cfg: bool(cfg.dreambooth.use_lora),
    trains_text_encoder=lambda cfg: bool(cfg.dreambooth.train_text_encoder),
    trains_full_unet=lambda cfg: not cfg.dreambooth.use_lora,
)

"""The LoRA method's rules (torch-free; the training class is lora.py)."""
from __future__ import annotations

from .spec import MethodSpec, typical_lr_warning

LORA = MethodSpec(
    name="lora",
    sections=("lora",),
    requirements=lambda cfg: [],
    warnings=lambda cfg: typical_lr_warning(cfg, 1e-2, "unusually high for LoRA (1e-4 to 1e-3 is typical)"),
    trains_lora=lambda cfg: True,
    trains_text_encoder=lambda cfg: bool(cfg.lora.train_text_encoder),
    trains_full_unet=lambda cfg: False,
)

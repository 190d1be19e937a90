"""The LoRA method's rules (torch-free; the training class is lora.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config.schema import find_field
from .spec import MethodSpec, show, typical_lr_warning

# The DreamBooth generation settings a LoRA job's generated regularisation images use.
_GENERATION_KEYS = ("dataset.reg_images_per_image", "dreambooth.class_negative_prompt", "dreambooth.class_steps",
                    "dreambooth.class_guidance_scale", "dreambooth.class_sampler", "dreambooth.class_batch_size")


def _warnings(cfg) -> list[str]:
    warnings = typical_lr_warning(cfg, 1e-2, "unusually high for LoRA (1e-4 to 1e-3 is typical)")
    if not cfg.dataset.reg_prompt.strip():
        warnings += [f"{show(cfg, name)} has no effect while dataset.reg_prompt is empty (no regularisation "
                     "images are generated)" for name in _GENERATION_KEYS if cfg.get(name) != find_field(name).default]
    return warnings


@dataclass(frozen=True)
class _LoraSpec(MethodSpec):
    def planned_dataset(self, cfg):
        """The dataset plus the regularisation images a run will generate first (dataset.reg_prompt)."""
        from ..dreambooth import planned_reg_index

        return planned_reg_index(cfg)


LORA = _LoraSpec(
    name="lora",
    sections=("lora",),
    requirements=lambda cfg: [],
    warnings=_warnings,
    trains_lora=lambda cfg: True,
    trains_text_encoder=lambda cfg: bool(cfg.lora.train_text_encoder),
    trains_full_unet=lambda cfg: False,
)

"""The textual-inversion method's rules (torch-free; the training class is textual_inversion.py)."""
from __future__ import annotations

from ..config.values import format_value
from .spec import MethodSpec, required, typical_lr_warning


def vector_tokens(token: str, vectors: int) -> list[str]:
    """The tokens that hold a multi-vector embedding, named as diffusers expands them: <t>, <t>_1, <t>_2, ..."""
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]


def _requirements(cfg) -> list[str]:
    reason = f"method = {format_value(cfg.method)}"
    return required(cfg, [("textual_inversion.token", reason), ("textual_inversion.init_word", reason)])


TEXTUAL_INVERSION = MethodSpec(
    name="textual_inversion",
    sections=("textual_inversion",),
    requirements=_requirements,
    warnings=lambda cfg: typical_lr_warning(cfg, 0.1, "unusually high for textual inversion (about 5e-3 is "
                                                      "typical)"),
    trains_lora=lambda cfg: False,
    trains_text_encoder=lambda cfg: False,  # only the new token's embedding learns
    trains_full_unet=lambda cfg: False,
    trains_embeddings=lambda cfg: True,
)

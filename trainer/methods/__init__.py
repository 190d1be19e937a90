"""Training methods. A method says what is trainable, how examples are weighted, and what is saved; the one
training loop in trainer/loop.py does everything else."""
from __future__ import annotations

from .base import TrainingMethod


def make_method(cfg) -> TrainingMethod:
    if cfg.method == "lora":
        from .lora import LoraMethod

        return LoraMethod(cfg)
    if cfg.method == "dreambooth":
        from .dreambooth import make_dreambooth_method

        return make_dreambooth_method(cfg)
    if cfg.method == "textual_inversion":
        from .textual_inversion import TextualInversionMethod

        return TextualInversionMethod(cfg)
    raise NotImplementedError(f"method {cfg.method!r} is not implemented yet")


__all__ = ["TrainingMethod", "make_method"]

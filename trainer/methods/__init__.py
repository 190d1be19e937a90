"""Training methods. A method says what is trainable, how examples are weighted, and what is saved; the one
training loop in trainer/loop.py does everything else. Importing this package loads no torch: each method's
torch-free rules (spec.py and *_spec.py) are read by the config checks; the training classes load on use."""
from __future__ import annotations

from .spec import MethodSpec, spec_for


def make_method(cfg):
    """The training object (a base.TrainingMethod) for the job's method."""
    if cfg.method == "lora":
        from .lora import LoraMethod

        return LoraMethod(cfg)
    if cfg.method == "dreambooth":
        from .dreambooth import make_dreambooth_method

        return make_dreambooth_method(cfg)
    if cfg.method == "finetune":
        from .finetune import FineTuneMethod

        return FineTuneMethod(cfg)
    if cfg.method == "textual_inversion":
        from .textual_inversion import TextualInversionMethod

        return TextualInversionMethod(cfg)
    raise NotImplementedError(f"method {cfg.method!r} is not implemented yet")


__all__ = ["MethodSpec", "make_method", "spec_for"]

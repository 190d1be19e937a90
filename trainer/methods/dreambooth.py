"""DreamBooth: teach a subject from a few images while class ("prior") images, made by the base model itself,
keep the class as it was. A full fine-tune of the UNet (full_model.py: saved as an original-layout
checkpoint), or DreamBooth-LoRA (the LoRA method's layers and Kohya file); optionally the text encoder until
stop_text_encoder_step. Loss per batch: instance MSE + prior_loss_weight x class MSE."""
from __future__ import annotations

import torch

from .base import TrainingMethod
from .full_model import FullModelTraining, TextEncoderStop
from .lora import LoraMethod


class _PriorPreservation(TextEncoderStop):
    """What both DreamBooth variants share: the class images, the loss weights, the text-encoder stop."""

    stop_setting = "dreambooth.stop_text_encoder_step"
    step_state_key = "dreambooth.optimizer_steps"

    def load_dataset(self, model, reporter, paths, device=None):
        from ..dreambooth import dreambooth_source, instance_index
        from ..dreambooth.generate import with_class_images

        instance = instance_index(self.cfg)
        return with_class_images(self.cfg, instance, dreambooth_source(self.cfg, instance), model,
                                 reporter, device)

    def example_weights(self, batch, device) -> torch.Tensor:
        """Weights that turn the loop's mean over the batch into mean(instance losses) + prior_loss_weight x
        mean(class losses): n / n_instance for subject examples, prior_loss_weight x n / n_class for class
        examples. A batch of one kind gets its plain mean (times prior_loss_weight for class images). Each is
        also scaled by its concept's loss_weight."""
        is_class = torch.tensor(batch.is_class, dtype=torch.bool, device=device)
        n, n_class = len(batch.is_class), sum(batch.is_class)
        instance_weight = n / (n - n_class) if n > n_class else 0.0
        class_weight = self.cfg.dreambooth.prior_loss_weight * n / n_class if n_class else 0.0
        concept_weights = torch.tensor(batch.loss_weights, dtype=torch.float32, device=device)
        return torch.where(is_class, class_weight, instance_weight).float() * concept_weights


class DreamBoothMethod(_PriorPreservation, FullModelTraining):
    """Full DreamBooth: every UNet weight learns, saved as a whole checkpoint."""


class DreamBoothLoraMethod(_PriorPreservation, LoraMethod):
    """DreamBooth-LoRA: the [lora] layers and Kohya file of the LoRA method, trained the DreamBooth way."""


def make_dreambooth_method(cfg) -> TrainingMethod:
    return DreamBoothLoraMethod(cfg) if cfg.dreambooth.use_lora else DreamBoothMethod(cfg)

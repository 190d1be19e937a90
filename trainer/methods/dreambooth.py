"""DreamBooth: teach a subject from a few images while class ("prior") images, made by the base model itself,
keep the class as it was. A full fine-tune of the UNet (saved as an original-layout checkpoint), or
DreamBooth-LoRA (the LoRA method's layers and Kohya file); optionally the text encoder until
stop_text_encoder_step. Loss per batch: instance MSE + prior_loss_weight x class MSE."""
from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch

from ..atomic import write_folder_atomically
from ..families import family
from .base import RunFacts, TrainingMethod
from .lora import LoraMethod

# Where the optimizer-step count travels in the training state (the text encoder stops at a step, also
# after a resume).
STEP_STATE_KEY = "dreambooth.optimizer_steps"


class _PriorPreservation:
    """What both DreamBooth variants share: the class images, the loss weights, the text-encoder stop."""

    cfg: object
    optimizer_steps = 0

    def prepare(self, model) -> list[dict]:
        groups = super().prepare(model)
        # Remembered by name: after stop_text_encoder_step the text encoder no longer requires grad, but its
        # trained weights still belong in every saved state.
        self._trained_names = set(self._named_parameters(model, trained_only=False, require_grad=True))
        return groups

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

    def after_optimizer_step(self, model) -> None:
        self.optimizer_steps += 1
        self._stop_text_encoder_when_due(model)

    def state_parameters(self, model) -> dict[str, torch.nn.Parameter]:
        # Everything that was trained, including a text encoder frozen at its stop step.
        return self._named_parameters(model, trained_only=True)

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        return {**super().trainable_state(model), STEP_STATE_KEY: torch.tensor(self.optimizer_steps)}

    def load_trainable_state(self, model, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if STEP_STATE_KEY not in state:
            raise ValueError("the saved training state was not made by a DreamBooth job")
        self.optimizer_steps = int(state.pop(STEP_STATE_KEY))
        super().load_trainable_state(model, state)
        self._stop_text_encoder_when_due(model)

    def _stop_text_encoder_when_due(self, model) -> None:
        stop = self.cfg.dreambooth.stop_text_encoder_step
        if self.trains_text_encoder and stop and self.optimizer_steps >= stop:
            for text_encoder in model.text_encoders:
                text_encoder.requires_grad_(False)

    def _named_parameters(self, model, trained_only: bool, require_grad: bool = False) -> dict[str, torch.nn.Parameter]:
        return {f"{mod_name}.{p_name}": p
                for mod_name, mod in self.trainable_modules(model).items()
                for p_name, p in mod.named_parameters()
                if (not require_grad or p.requires_grad)
                and (not trained_only or f"{mod_name}.{p_name}" in self._trained_names)}


class _FullFineTune(TrainingMethod):
    """Every UNet weight (and the text encoder's when trained) learns; saved as a whole checkpoint."""

    def prepare(self, model) -> list[dict]:
        rates = self.spec.learning_rates(self.cfg)
        # Trainable weights stay fp32 (the loop casts only frozen ones to the mixed-precision dtype).
        model.unet.requires_grad_(True)
        groups = [{"params": list(model.unet.parameters()), "lr": rates["unet"]}]
        if self.trains_text_encoder:
            for text_encoder in model.text_encoders:
                text_encoder.requires_grad_(True)
                groups.append({"params": list(text_encoder.parameters()),
                               "lr": rates["text_encoder"]})
        return groups

    def save(self, path: Path, run: RunFacts, dtype: torch.dtype) -> Path:
        from ..models import write_single_file

        model = run.model
        components = {"unet": model.unet, "vae": model.vae, "scheduler": _original_scheduler(model)}
        names = ["text_encoder", "text_encoder_2"][:len(model.text_encoders)]
        components.update(zip(names, model.text_encoders))
        metadata = {"kiln_method": "dreambooth", "kiln_steps": str(run.step), "kiln_base_model": model.name,
                    "kiln_base_model_hash": model.hash}
        written = write_single_file(path, model.arch, components, metadata, dtype=dtype)
        if run.cfg.output.save_diffusers:
            _save_diffusers_copy(written, model, dtype, overwrite=run.cfg.output.overwrite)
        return written


def _original_scheduler(model):
    """The base model's own scheduler (PNDM, Euler, ...), so the checkpoint samples as the base did."""
    config = json.loads((model.config_dir / "scheduler" / "scheduler_config.json").read_text())
    return getattr(diffusers, config["_class_name"]).from_config(config)


def _save_diffusers_copy(checkpoint: Path, model, dtype: torch.dtype, overwrite: bool) -> Path:
    """A diffusers folder beside the checkpoint (NAME/), read back from the checkpoint just written."""
    target = checkpoint.with_suffix("")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (output.save_diffusers); {checkpoint} was saved, the "
                              "diffusers copy was not: move the folder away or set output.overwrite = true")
    pipeline_class = getattr(diffusers, family(model.arch).pipeline)
    pipe = pipeline_class.from_single_file(str(checkpoint), config=str(model.config_dir), local_files_only=True,
                                           torch_dtype=dtype)
    return write_folder_atomically(target, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True),
                                   replace=True)


class DreamBoothMethod(_PriorPreservation, _FullFineTune):
    """Full DreamBooth: every UNet weight learns, saved as a whole checkpoint."""


class DreamBoothLoraMethod(_PriorPreservation, LoraMethod):
    """DreamBooth-LoRA: the [lora] layers and Kohya file of the LoRA method, trained the DreamBooth way."""


def make_dreambooth_method(cfg) -> TrainingMethod:
    return DreamBoothLoraMethod(cfg) if cfg.dreambooth.use_lora else DreamBoothMethod(cfg)

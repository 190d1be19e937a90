"""What the methods that train whole model weights share (full DreamBooth and fine-tune): every UNet weight
learns (and the text encoder's when trained), the text encoder may stop at a step, and the result is saved as
one original-layout checkpoint (optionally with a diffusers copy)."""
from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch

from ..atomic import write_folder_atomically
from ..families import family
from .base import RunFacts, TrainingMethod


class TextEncoderStop:
    """Mixin: the text encoder stops learning after `<section>.stop_text_encoder_step` optimizer steps, also
    after a resume (the step count travels in the training state under `step_state_key`)."""

    cfg: object
    stop_setting: str  # e.g. "dreambooth.stop_text_encoder_step"
    step_state_key: str  # e.g. "dreambooth.optimizer_steps" (the name in saved states: keep it stable)
    optimizer_steps = 0

    def prepare(self, model) -> list[dict]:
        groups = super().prepare(model)
        # Remembered by name: after the stop step the text encoder no longer requires grad, but its trained
        # weights still belong in every saved state.
        self._trained_names = set(self._named_parameters(model, trained_only=False, require_grad=True))
        return groups

    def after_optimizer_step(self, model) -> None:
        self.optimizer_steps += 1
        self._stop_text_encoder_when_due(model)

    def state_parameters(self, model) -> dict[str, torch.nn.Parameter]:
        # Everything that was trained, including a text encoder frozen at its stop step.
        return self._named_parameters(model, trained_only=True)

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        return {**super().trainable_state(model), self.step_state_key: torch.tensor(self.optimizer_steps)}

    def load_trainable_state(self, model, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if self.step_state_key not in state:
            raise ValueError(f"the saved training state was not made by a method = \"{self.cfg.method}\" job")
        self.optimizer_steps = int(state.pop(self.step_state_key))
        super().load_trainable_state(model, state)
        self._stop_text_encoder_when_due(model)

    def _stop_text_encoder_when_due(self, model) -> None:
        stop = self.cfg.get(self.stop_setting)
        if self.trains_text_encoder and stop and self.optimizer_steps >= stop:
            for text_encoder in model.text_encoders:
                text_encoder.requires_grad_(False)

    def _named_parameters(self, model, trained_only: bool, require_grad: bool = False) -> dict[str, torch.nn.Parameter]:
        return {f"{mod_name}.{p_name}": p
                for mod_name, mod in self.trainable_modules(model).items()
                for p_name, p in mod.named_parameters()
                if (not require_grad or p.requires_grad)
                and (not trained_only or f"{mod_name}.{p_name}" in self._trained_names)}


class FullModelTraining(TrainingMethod):
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
        metadata = {"kiln_method": run.cfg.method, "kiln_steps": str(run.step), "kiln_base_model": model.name,
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

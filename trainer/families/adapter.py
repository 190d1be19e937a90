"""The torch side of a model family: what the engine calls instead of testing a family id. One adapter
instance per family (`trainer.families.adapter_for(spec_or_id)`); its spec is `self.spec`.

The loop's step, with the adapter's parts marked (trainer/loop.py):

    text  = adapter.text_conditioner(model, cache=..., clip_skip=...)        # once
    obj   = adapter.objective(cfg.training, model)                           # once
    ...
    noise = obj.noise(latents, gen); t = obj.draw_timesteps(latents, gen)
    noisy = obj.noisy(latents, noise, t, gen); target = obj.target(latents, noise, t)
    cond  = text.encode(captions, device)                                    # any object the adapter reads
    pred  = adapter.predict(denoiser, noisy, t, cond, batch)                 # same layout as `noisy`
    pred  = obj.prediction(pred, noisy, t)                                   # flow: model_prediction_type
    loss  = obj.losses(pred, target, t, batch.pixel_weights)

A new family implements every method below that raises NotImplementedError (SDAdapter in sd_adapter.py is
the reference), registers its FamilySpec (trainer/families/flow.py or a new module) with `adapter =
"module:Class"`, and nothing else in the engine changes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch


class FamilyAdapter:
    def __init__(self, spec):
        self.spec = spec

    # --- models ---------------------------------------------------------------------------------------
    def make_tiny(self, seed: int = 0) -> dict[str, Any]:
        """The components of a tiny random model of this family, by diffusers component name (what
        `trainer tiny-model --arch <id>` saves and the tests train)."""
        raise NotImplementedError

    def save_tiny(self, components: Mapping[str, Any], out: Path, fmt: str) -> None:
        """Write tiny `components` to `out` as a diffusers folder (fmt "diffusers") or a single file."""
        raise NotImplementedError

    def load(self, model_cfg, device, dtype, quantize=None):
        """The BaseModel (trainer/models/loading.py) that `model_cfg` names, frozen, in eval mode, on `device`
        in `dtype`; with `quantize` (trainer/quantize_load.QuantizedLoad) its denoiser quantized as it is read
        where the source allows, and `load_note` saying how. `BaseModel.unet` holds the denoiser whatever its class; `text_encoders` / `tokenizers` are
        in the order of `spec.text_encoders`; `noise_scheduler` is the family's training scheduler."""
        raise NotImplementedError

    # --- captions -------------------------------------------------------------------------------------
    def text_conditioner(self, model, cache: bool, clip_skip: int = 1):
        """An object with `encode(captions, device) -> cond`, `precompute(captions, device)` (fills `.cache`
        when caching), `.cache` (None when not caching) and `.text_encoders` (the list the loop replaces
        with DDP-wrapped encoders). `cond` is whatever `predict` reads."""
        raise NotImplementedError

    # --- training step --------------------------------------------------------------------------------
    def objective(self, training, model):
        """The objective of the job's [training] options: an object with noise / draw_timesteps / noisy /
        target / prediction / losses (trainer/diffusion.py Objective for DDPM, trainer/flow_matching.py FlowObjective)."""
        raise NotImplementedError

    def predict(self, denoiser, noisy: torch.Tensor, timesteps: torch.Tensor, cond, batch) -> torch.Tensor:
        """The denoiser's prediction for a batch, in the layout of `noisy` (a family that packs latents
        into tokens unpacks them here). `timesteps` are what the objective drew (DDPM: ints 0-999; flow:
        sigma x 1000)."""
        raise NotImplementedError

    # --- LoRA -----------------------------------------------------------------------------------------
    def denoiser_lora_config(self, lora_cfg, patterns: tuple[dict, dict] = ({}, {})):
        """The peft config of the denoiser's network for the [lora] section (`patterns`: per-module
        rank/alpha patterns that come first, from lora.init_weights)."""
        raise NotImplementedError

    def export_names(self, model) -> Mapping[str, str] | None:
        """Denoiser module names as the Kohya-layout file names them ({diffusers name: original name}), or
        None when the file uses the diffusers names."""
        return None

    def save_lora(self, path: Path, model, text_encoders, info, dtype: torch.dtype) -> Path:
        """Write the trained LoRA of `model` (and of `text_encoders`, when they learned) to `path` in the
        layout the community's tools read, with ss_* / modelspec metadata from `info`."""
        raise NotImplementedError

    # --- sampling -------------------------------------------------------------------------------------
    def pipeline(self, model, scheduler=None):
        """A diffusers pipeline around the model's own modules (nothing copied); `scheduler` replaces the
        family's sampling scheduler when given."""
        raise NotImplementedError

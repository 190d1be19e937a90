"""The torch side of SD 1.x, 2.x and SDXL (one adapter; the spec's fields say where they differ)."""
from __future__ import annotations

from pathlib import Path

import torch

from .adapter import FamilyAdapter


class SDAdapter(FamilyAdapter):
    # --- models ---------------------------------------------------------------------------------------
    def make_tiny(self, seed: int = 0) -> dict:
        from ..models import tiny

        makers = {"sd15": tiny.make_tiny_sd15, "sd2": tiny.make_tiny_sd2, "sdxl": tiny.make_tiny_sdxl}
        return makers[self.spec.id](seed)

    def save_tiny(self, components, out: Path, fmt: str) -> None:
        self.pipeline_class()(**components).save_pretrained(out, safe_serialization=True)

    def load(self, model_cfg, device, dtype, quantize=None):
        from ..models.loading import load_sd_model

        return load_sd_model(model_cfg, device, dtype, quantize)

    # --- captions -------------------------------------------------------------------------------------
    def text_conditioner(self, model, cache: bool, clip_skip: int = 1):
        from ..conditioning import TextConditioner

        return TextConditioner(self.spec.id, model.tokenizers, model.text_encoders, cache=cache, clip_skip=clip_skip)

    # --- training step --------------------------------------------------------------------------------
    def objective(self, training, model):
        from ..diffusion import Objective

        if training is None:  # the plain objective: no loss options (the validation yardstick)
            return Objective(model.noise_scheduler, model.prediction_type)
        return Objective.from_config(training, model.noise_scheduler, model.prediction_type)

    def predict(self, denoiser, noisy, timesteps, cond, batch) -> torch.Tensor:
        hidden, pooled = cond
        return denoiser(noisy, timesteps, **self.denoiser_kwargs(batch, hidden, pooled)).sample

    def denoiser_kwargs(self, batch, hidden: torch.Tensor, pooled: torch.Tensor | None) -> dict:
        kwargs = {"encoder_hidden_states": hidden}
        if self.spec.size_conditioning:
            # (original h, w) + (crop top, left) + (target h, w) per example, as SDXL was trained with.
            time_ids = torch.tensor([[*o, *c, *t] for o, c, t in zip(batch.original_sizes, batch.crop_top_lefts,
                                                                    batch.target_sizes)],
                                    device=hidden.device, dtype=hidden.dtype)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return kwargs

    # --- LoRA -----------------------------------------------------------------------------------------
    def denoiser_lora_config(self, lora_cfg, patterns=({}, {})):
        from ..methods.lora import unet_lora_config

        return unet_lora_config(lora_cfg, patterns)

    def export_names(self, model):
        """Kohya names SDXL LoRA modules after the original UNet layout, SD 1.x/2.x after diffusers' own."""
        if not self.spec.kohya_original_names:
            return None
        from ..models.single_file import unet_module_names

        return unet_module_names(model.unet)

    def save_lora(self, path, model, text_encoders, info, dtype):
        from ..export import save_lora

        return save_lora(path, unet=model.unet, text_encoders=text_encoders, arch=self.spec.id, info=info,
                         dtype=dtype, unet_module_names=self.export_names(model))

    @property
    def writes_diffusers_lora(self) -> bool:
        """Whether output.save_diffusers can write diffusers' own LoRA format (SD 1.x/2.x pipelines)."""
        return self.spec.pipeline == "StableDiffusionPipeline"

    def save_lora_diffusers(self, folder, model, text_encoders, dtype):
        from ..export import save_lora_diffusers

        return save_lora_diffusers(folder, unet=model.unet, text_encoder=text_encoders[0] if text_encoders else None,
                                   dtype=dtype)

    # --- sampling -------------------------------------------------------------------------------------
    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.spec.pipeline)

    def pipeline(self, model, scheduler=None):
        """The SD or SDXL pipeline around the model's own modules; no safety checker."""
        parts = dict(unet=model.unet, vae=model.vae, scheduler=scheduler or model.noise_scheduler)
        for encoder, te, tok in zip(self.spec.text_encoders, model.text_encoders, model.tokenizers):
            parts[encoder.component], parts[encoder.tokenizer] = te, tok
        if len(self.spec.text_encoders) == 1:
            parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return self.pipeline_class()(**parts)

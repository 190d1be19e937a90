"""Generating class images with the base model that is already loaded for training: a diffusers pipeline is
built around its components (nothing loads twice), run batched with one seed per image, fp16 autocast on CUDA
(attention through PyTorch's SDPA, diffusers' default), training adapters switched off (the pictures are the
base model's), and the VAE decodes in its own dtype because the SD VAEs overflow in fp16."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from PIL import Image

from ..sampling import pipeline_over
from .class_images import ClassImageSpec

SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
              "dpmpp_2m": DPMSolverMultistepScheduler}


class ClassImageGenerator:
    """Callable seeds -> images for trainer.dreambooth.fill_class_folder."""

    def __init__(self, model, spec: ClassImageSpec):
        self.model, self.spec = model, spec
        self.pipe = _pipeline(model, spec.sampler)

    @torch.no_grad()
    def __call__(self, seeds: Sequence[int]) -> list[Image.Image]:
        model, spec = self.model, self.spec
        device = model.unet.device
        # CPU generators give the same pictures on every device, so a shared cache folder means one thing.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        base_only = _base_model_only(model.unet, *model.text_encoders)
        with _eval_mode(model.unet, *model.text_encoders, model.vae), base_only, _autocast(device):
            latents = self.pipe(prompt=[spec.prompt] * len(seeds),
                                negative_prompt=[spec.negative_prompt] * len(seeds) if spec.negative_prompt else None,
                                height=spec.resolution, width=spec.resolution, num_inference_steps=spec.steps,
                                guidance_scale=spec.guidance_scale, generator=generators, output_type="latent").images
        vae = model.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample
        return self.pipe.image_processor.postprocess(pixels.float(), output_type="pil")


def _pipeline(model, sampler: str):
    # The scheduler comes from the model folder's own config (not the training schedule, which zero terminal
    # SNR may have rescaled): the pictures, and the shared class-image cache keyed by the base model, stay the
    # base model's.
    scheduler_config = json.loads((model.config_dir / "scheduler" / "scheduler_config.json").read_text())
    scheduler = SCHEDULERS[sampler].from_config(scheduler_config, prediction_type=model.prediction_type)
    pipe = pipeline_over(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Dropout off while generating (LoRA layers added for training start in train mode); modes restored."""
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


@contextlib.contextmanager
def _base_model_only(*modules: torch.nn.Module) -> Iterator[None]:
    """The training adapters (LoRA layers added before the class images are made, which hold a file's weights
    with lora.init_weights) switched off while generating: the pictures, and the cache folder keyed by the
    base model, are the base model's. Which parameters require grad is restored as it was."""
    adapted = [module for module in modules if getattr(module, "_hf_peft_config_loaded", False)]
    trainable = [{p: p.requires_grad for p in module.parameters()} for module in adapted]
    try:
        for module in adapted:
            module.disable_adapters()
        yield
    finally:
        for module, flags in zip(adapted, trainable):
            module.enable_adapters()
            for parameter, flag in flags.items():
                parameter.requires_grad_(flag)


def _autocast(device: torch.device):
    """fp16 on CUDA: the trained UNet may be fp32 beside fp16 frozen parts; autocast runs them together."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()

"""A fixed yardstick for "did it learn": the denoising loss of a model on a dataset at a fixed set of noises and
timesteps. Used by the learn tests and the benchmarks; the same draws give the same number for any model."""
from __future__ import annotations

import torch

from . import diffusion
from .conditioning import TextConditioner
from .data import TrainData

EVAL_TIMESTEPS = (50, 200, 400, 600, 800, 950)


@torch.no_grad()
def fixed_denoising_loss(model, data: TrainData, seed: int = 1234, draws: int = len(EVAL_TIMESTEPS),
                         captions=None, clip_skip: int = 1, text: TextConditioner | None = None) -> float:
    """Mean loss over every batch of epoch 0, `draws` noise draws each; with the default number of draws
    every image meets every one of EVAL_TIMESTEPS once.
    `captions(batch)`, when given, replaces the batch's captions (textual inversion's prompts, say).
    `text`: the conditioner to encode with (training's cached one); by default a fresh one, uncached."""
    if text is None:
        text = TextConditioner(model.arch, model.tokenizers, model.text_encoders, cache=False, clip_skip=clip_skip)
    device = next(model.unet.parameters()).device
    losses = []
    for b, batch in enumerate(data.epoch_batches(0)):
        g = torch.Generator(device).manual_seed(seed + b)
        pixels = batch.pixels.to(device, model.vae.dtype)
        latents = model.vae.encode(pixels).latent_dist.mean * model.vae.config.scaling_factor
        hidden, pooled = text.encode(captions(batch) if captions else batch.captions, device)
        for d in range(draws):
            noise = torch.randn(latents.shape, generator=g, device=device)
            t = torch.tensor([EVAL_TIMESTEPS[(b + d + i) % len(EVAL_TIMESTEPS)] for i in range(len(latents))],
                             device=device)
            noisy = model.noise_scheduler.add_noise(latents, noise, t)
            target = diffusion.training_target(model.noise_scheduler, model.prediction_type, latents, noise, t)
            pred = model.unet(noisy, t, **text.unet_kwargs(batch, hidden, pooled)).sample
            losses.append(diffusion.example_losses(pred, target).mean().item())
    return sum(losses) / len(losses)

"""A fixed yardstick for "did it learn": the denoising loss of a model on a dataset at a fixed set of noises and
timesteps. Used by the learn tests, the benchmarks and the validation loss; the same draws give the same number
for any model."""
from __future__ import annotations

import torch

from . import diffusion
from .data import TrainData
from .families import adapter_for

from .diffusion import EVAL_TIMESTEPS  # noqa: F401  (tests and benches import it from here)


def eval_timesteps(objective) -> list[int]:
    """The fixed timesteps of `objective`'s validation loss (each objective's eval_grid)."""
    return objective.eval_grid()


@torch.no_grad()
def fixed_denoising_loss(model, data: TrainData, seed: int = 1234, draws: int = len(EVAL_TIMESTEPS),
                         captions=None, clip_skip: int = 1, objective: diffusion.Objective | None = None,
                         example_weights=None, text=None) -> float:
    """Mean loss over every batch of epoch 0, `draws` noise draws each; with the default number of draws
    every image meets every one of the fixed timesteps once. The draws come from `seed` alone.

    Without `objective`: plain Gaussian noise at EVAL_TIMESTEPS and unweighted MSE, a number that compares
    runs whatever their loss settings. With a run's `objective` (validation.loss = "training"): that run's
    training step (noise options, input perturbation, target, loss, Huber schedule, min-SNR/debiased
    weights), the batch's masks and `example_weights(batch, device)` when given, at EVAL_TIMESTEPS spread
    over the objective's timestep range. The default objective gives exactly the plain number.
    `captions(batch)`, when given, replaces the batch's captions (textual inversion's prompts, say).
    `text`: the conditioner to encode with (training's cached one); by default a fresh one, uncached."""
    plain = objective is None
    adapter = adapter_for(model.arch)
    objective = objective or adapter.objective(None, model)  # None: the family's plain objective
    grid = objective.eval_grid()
    if text is None:
        text = adapter.text_conditioner(model, cache=False, clip_skip=clip_skip)
    device = next(model.unet.parameters()).device
    losses = []
    for b, batch in enumerate(data.epoch_batches(0)):
        g = torch.Generator(device).manual_seed(seed + b)
        pixels = batch.pixels.to(device, model.vae.dtype)
        shift = getattr(model.vae.config, "shift_factor", None) or 0.0  # Flux/SD3 VAEs shift; SD's do not
        latents = ((model.vae.encode(pixels).latent_dist.mean - shift) * model.vae.config.scaling_factor).float()
        cond = text.encode(captions(batch) if captions else batch.captions, device)
        masks = None if plain else batch.pixel_weights
        weights = example_weights(batch, device) if example_weights is not None else 1.0
        for d in range(draws):
            t = torch.tensor([grid[(b + d + i) % len(grid)] for i in range(len(latents))], device=device)
            noise = objective.noise(latents, g)
            noisy = objective.noisy(latents, noise, t, g)
            target = objective.target(latents, noise, t)
            pred = objective.prediction(adapter.predict(model.unet, noisy, t, cond, batch), noisy, t)
            losses.append((objective.losses(pred, target, t, masks) * weights).mean().item())
    return sum(losses) / len(losses)

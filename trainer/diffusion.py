"""The denoising objective shared by every method: noise, timesteps, target and the weighted loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        # A per-channel constant shift teaches the model to change overall brightness (Crosslabs' trick).
        shift = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                            device=latents.device, dtype=latents.dtype)
        noise = noise + noise_offset * shift
    return noise


def sample_timesteps(n: int, scheduler, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator,
                         device=device).long()


def training_target(scheduler, prediction_type: str, latents, noise, timesteps) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def example_losses(pred: torch.Tensor, target: torch.Tensor,
                   pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per example, in fp32 whatever the autocast dtype. pixel_weights [B, 1, h, w]
    (masked training) weighs each latent pixel's error before the mean."""
    errors = F.mse_loss(pred.float(), target.float(), reduction="none")
    if pixel_weights is not None:
        errors = errors * pixel_weights.to(errors.device, errors.dtype)
    return errors.mean(dim=(1, 2, 3))


def min_snr_weights(scheduler, timesteps, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): caps the weight of easy, low-noise timesteps."""
    snr = compute_snr(scheduler, timesteps)
    capped = torch.clamp(snr, max=gamma)
    # For v-prediction the loss already carries a factor (snr + 1) relative to epsilon.
    return capped / (snr + 1) if prediction_type == "v_prediction" else capped / snr

"""The rectified-flow (flow-matching) objective of SD 3, Flux.1 and Chroma: noisy = (1 - sigma) x0 + sigma noise,
target = noise - x0, the model sees timestep = sigma x 1000. How sigma is drawn and how each example's loss is
weighed follow sd-scripts (library/flux_train_utils.get_noisy_model_input_and_timesteps, sd3_train_utils) and
diffusers (training_utils.compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3), which is what
users of these families compare against.

As the DDPM objective (trainer/diffusion.py), every draw takes the micro-batch's generator in a fixed order,
so a step is a pure function of its batch index and a resumed run replays exactly."""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from .diffusion import EVAL_TIMESTEPS, example_losses, huber_thresholds

FLOW_SAMPLINGS = ("uniform", "sigma", "logit_normal", "shift", "flux_shift", "mode")
WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")
PREDICTION_TYPES = ("raw", "additive", "sigma_scaled")
_THOUSAND_STEPS = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))  # for huber_thresholds


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The time shift of SD 3 / Flux: s*sigma / (1 + (s - 1) sigma) (more training at high noise for s > 1)."""
    return sigmas * shift / (1 + (shift - 1) * sigmas)


def flux_shift(image_tokens: int) -> float:
    """Flux.1's resolution-dependent shift mu (its sampler's, which sd-scripts trains with for flux_shift):
    linear in the number of 2x2 latent patches, from 0.5 at 256 tokens to 1.15 at 4096; the shift is e^mu."""
    base_tokens, max_tokens, base_shift, max_shift = 256, 4096, 0.5, 1.15
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return math.exp(base_shift + slope * (image_tokens - base_tokens))


def draw_sigmas(n: int, generator: torch.Generator, device, sampling: str, *, logit_mean: float = 0.0,
                logit_std: float = 1.0, sigmoid_scale: float = 1.0, shift: float = 3.0, mode_scale: float = 1.29,
                image_tokens: int = 4096) -> torch.Tensor:
    """n sigmas in (0, 1) for `sampling` (FLOW_SAMPLINGS):
    uniform / sigma: U(0, 1); logit_normal: sigmoid(N(mean, std) x sigmoid_scale); shift: sigmoid(N(0,1) x
    sigmoid_scale) shifted by `shift`; flux_shift: the same shifted by Flux's resolution-dependent shift;
    mode: u = U(0,1), 1 - u - mode_scale (cos(pi u / 2)^2 - 1 + u) (Esser et al. 2024, eq. in diffusers)."""
    if sampling in ("uniform", "sigma"):
        return torch.rand((n,), generator=generator, device=device)
    if sampling == "mode":
        u = torch.rand((n,), generator=generator, device=device)
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    z = torch.randn((n,), generator=generator, device=device)
    if sampling == "logit_normal":
        return torch.sigmoid((z * logit_std + logit_mean) * sigmoid_scale)
    sigmas = torch.sigmoid(z * sigmoid_scale)
    if sampling == "shift":
        return shift_sigmas(sigmas, shift)
    if sampling == "flux_shift":
        return shift_sigmas(sigmas, flux_shift(image_tokens))
    raise ValueError(f"unknown flow timestep sampling {sampling!r}; expected one of {', '.join(FLOW_SAMPLINGS)}")


def sigma_weights(sigmas: torch.Tensor, scheme: str) -> torch.Tensor:
    """Per-example loss weights of diffusers' compute_loss_weighting_for_sd3: none 1; sigma_sqrt sigma^-2;
    cosmap 2 / (pi (1 - 2 sigma + 2 sigma^2))."""
    if scheme == "none":
        return torch.ones_like(sigmas)
    if scheme == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    raise ValueError(f"unknown weighting scheme {scheme!r}; expected one of {', '.join(WEIGHTINGS)}")


@dataclass(frozen=True)
class FlowObjective:
    """The [training] options of a flow job, read once; the same methods as diffusion.Objective, so the loop
    and the validation loss run either. Timesteps are sigma x 1000 (floats), as the SD 3 and Flux
    transformers take them (a Flux adapter divides by 1000 for diffusers' FluxTransformer2DModel)."""
    loss: str = "l2"
    huber_c: float = 0.1
    huber_schedule: str = "constant"
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 3.0
    mode_scale: float = 1.29
    weighting_scheme: str = "none"
    model_prediction_type: str = "raw"
    patch_size: int = 2  # latent pixels per token side (flux_shift counts tokens)

    @classmethod
    def from_config(cls, training, patch_size: int = 2) -> "FlowObjective":
        if training is None:
            return cls(patch_size=patch_size)
        keys = [k for k in cls.__dataclass_fields__ if k != "patch_size"]
        return cls(patch_size=patch_size, **{k: getattr(training, k) for k in keys})

    def noise(self, latents, generator):
        return torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)

    def draw_timesteps(self, latents, generator):
        tokens = (latents.shape[-2] // self.patch_size) * (latents.shape[-1] // self.patch_size)
        sigmas = draw_sigmas(len(latents), generator, latents.device, self.timestep_sampling,
                             logit_mean=self.logit_mean, logit_std=self.logit_std, sigmoid_scale=self.sigmoid_scale,
                             shift=self.discrete_flow_shift, mode_scale=self.mode_scale, image_tokens=tokens)
        return sigmas * 1000

    @staticmethod
    def sigmas(timesteps, ndim: int) -> torch.Tensor:
        return (timesteps.float() / 1000).view(-1, *([1] * (ndim - 1)))

    def noisy(self, latents, noise, timesteps, generator):
        sigma = self.sigmas(timesteps, latents.ndim).to(latents.dtype)
        return (1 - sigma) * latents + sigma * noise

    def target(self, latents, noise, timesteps):
        return noise - latents

    def prediction(self, output, noisy, timesteps):
        """What the loss compares with noise - x0, from the model's output (sd-scripts' model_prediction_type,
        flux_train_utils.apply_model_prediction_type): raw as is; additive output + noisy input; sigma_scaled
        noisy input - sigma x output. The target stays noise - x0 for all three, as in sd-scripts."""
        if self.model_prediction_type == "raw":
            return output
        if self.model_prediction_type == "additive":
            return output + noisy
        if self.model_prediction_type == "sigma_scaled":
            return noisy - self.sigmas(timesteps, output.ndim).to(output.dtype) * output
        raise ValueError(f"unknown model_prediction_type {self.model_prediction_type!r}; expected one of "
                         f"{', '.join(PREDICTION_TYPES)}")

    def losses(self, pred, target, timesteps, pixel_weights=None) -> torch.Tensor:
        huber_c = None
        if self.loss in ("huber", "smooth_l1"):  # exponential reads t of a 1000-step range, as sigma x 1000 is
            huber_c = huber_thresholds(_THOUSAND_STEPS, timesteps, self.huber_c, self.huber_schedule)
        losses = example_losses(pred, target, self.loss, huber_c, pixel_weights)
        return losses * sigma_weights(timesteps.float() / 1000, self.weighting_scheme).to(losses.device)

    def eval_grid(self) -> list[float]:
        """The validation loss's fixed timesteps: EVAL_TIMESTEPS read as sigma x 1000."""
        return [float(t) for t in EVAL_TIMESTEPS]

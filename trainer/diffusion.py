"""The denoising objective shared by every method: noise, timesteps, target and the weighted loss.

Every random draw takes the micro-batch's generator (loop.seed_batch), in a fixed order, so a step is a pure
function of its batch index and a resumed run replays exactly. Options that are off draw nothing, so turning
them on changes nothing else's draws. The options follow kohya-ss/sd-scripts' definitions (train_util.py,
custom_train_functions.py), which is what Kiln's users compare against."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

LOSSES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
DEBIAS_SNR_CAP = 1000.0
EVAL_TIMESTEPS = (50, 200, 400, 600, 800, 950)  # validation's fixed timesteps, for a 1000-step schedule  # sd-scripts caps the SNR there: at t = 0 it is near infinite


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float,
                 multires_iterations: int = 0, multires_discount: float = 0.3) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        # A per-channel constant shift teaches the model to change overall brightness (Crosslabs' trick).
        shift = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                            device=latents.device, dtype=latents.dtype)
        noise = noise + noise_offset * shift
    if multires_iterations:
        noise = pyramid_noise(noise, generator, multires_iterations, multires_discount)
    return noise


def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution ("pyramid") noise, J. Whitaker 2023: noise drawn at ever coarser sizes (each a random
    factor of 2-3 smaller), upsampled bilinearly, added with weight discount**i, then rescaled to unit std.
    sd-scripts draws the factor from Python's global `random`; here the batch generator draws it (resume)."""
    b, c, h, w = noise.shape
    noise = noise.clone()
    for i in range(iterations):
        r = torch.rand((), generator=generator, device=noise.device).item() * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        coarse = torch.randn((b, c, hn, wn), generator=generator, device=noise.device, dtype=noise.dtype)
        noise += F.interpolate(coarse, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def timestep_range(scheduler, min_timestep: int = 0, max_timestep: int | None = None) -> tuple[int, int]:
    """[low, high): the timesteps training draws from. high is max_timestep capped at the scheduler's count
    (the count when None); low is min_timestep, below high."""
    top = scheduler.config.num_train_timesteps
    high = top if max_timestep is None else min(max_timestep, top)
    return min(min_timestep, high - 1), high


def sample_timesteps(n: int, scheduler, generator: torch.Generator, device, min_timestep: int = 0,
                     max_timestep: int | None = None, sampling: str = "uniform", logit_mean: float = 0.0,
                     logit_std: float = 1.0) -> torch.Tensor:
    """Timesteps in [min_timestep, max_timestep) (max defaults to the scheduler's count). uniform: every
    timestep equally often; logit_normal: t = floor(min + sigmoid(N(mean, std)) x (max - min)), which favours
    the middle of the range (Esser et al. 2024)."""
    low, high = timestep_range(scheduler, min_timestep, max_timestep)
    if sampling == "uniform":
        return torch.randint(low, high, (n,), generator=generator, device=device).long()
    if sampling == "logit_normal":
        z = torch.randn((n,), generator=generator, device=device) * logit_std + logit_mean
        t = torch.floor(low + torch.sigmoid(z) * (high - low)).long()
        return t.clamp(low, high - 1)
    raise ValueError(f"unknown timestep sampling {sampling!r}; expected one of {', '.join(TIMESTEP_SAMPLINGS)}")


def perturbed_noisy_latents(scheduler, latents, noise, timesteps, generator: torch.Generator,
                            ip_noise_gamma: float) -> torch.Tensor:
    """The noisy input. With input perturbation (Ning et al. 2023) the input carries noise + gamma x extra
    noise while the target stays `noise`, which reduces exposure bias."""
    if ip_noise_gamma:
        extra = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise + ip_noise_gamma * extra
    return scheduler.add_noise(latents, noise, timesteps)


def training_target(scheduler, prediction_type: str, latents, noise, timesteps) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def huber_thresholds(scheduler, timesteps: torch.Tensor, huber_c: float, schedule: str) -> torch.Tensor:
    """sd-scripts' per-example Huber parameter: constant c; exponential exp(ln(c) x t / T), from 1 at t = 0 to
    c at t = T; snr (1 - c) / (1 + sigma_t)^2 + c with sigma_t = sqrt((1 - abar_t) / abar_t)."""
    if schedule == "constant":
        return torch.full(timesteps.shape, huber_c, device=timesteps.device)
    if schedule == "exponential":
        alpha = -math.log(huber_c) / scheduler.config.num_train_timesteps
        return torch.exp(-alpha * timesteps.float())
    if schedule == "snr":
        abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigmas = ((1.0 - abar) / abar) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    raise ValueError(f"unknown huber schedule {schedule!r}; expected one of {', '.join(HUBER_SCHEDULES)}")


def example_losses(pred: torch.Tensor, target: torch.Tensor, loss: str = "l2",
                   huber_c: torch.Tensor | None = None, pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Loss per example (mean over its elements), in fp32 whatever the autocast dtype. huber (pseudo-Huber,
    2c(sqrt(d^2 + c^2) - c)) and smooth_l1 (2(sqrt(d^2 + c^2) - c)) need the per-example `huber_c`.
    pixel_weights [B, 1, h, w] (masked training) weighs each latent pixel's loss before the mean."""
    pred, target = pred.float(), target.float()
    if loss == "l2":
        elementwise = F.mse_loss(pred, target, reduction="none")
    elif loss == "l1":
        elementwise = F.l1_loss(pred, target, reduction="none")
    elif loss in ("huber", "smooth_l1"):
        c = huber_c.float().view(-1, *([1] * (pred.ndim - 1)))
        root = torch.sqrt((pred - target) ** 2 + c**2) - c
        elementwise = 2 * c * root if loss == "huber" else 2 * root
    else:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    if pixel_weights is not None:
        elementwise = elementwise * pixel_weights.to(elementwise.device, elementwise.dtype)
    return elementwise.mean(dim=tuple(range(1, pred.ndim)))


def min_snr_weights(scheduler, timesteps, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): caps the weight of easy, low-noise timesteps."""
    snr = compute_snr(scheduler, timesteps)
    capped = torch.clamp(snr, max=gamma)
    # For v-prediction the loss already carries a factor (snr + 1) relative to epsilon.
    return capped / (snr + 1) if prediction_type == "v_prediction" else capped / snr


def debiased_weights(scheduler, timesteps, prediction_type: str) -> torch.Tensor:
    """Debiased estimation (Yu et al. 2023, as sd-scripts weighs it): 1/sqrt(snr) for epsilon, 1/(snr + 1) for
    v-prediction, with the SNR capped at 1000."""
    snr = torch.clamp(compute_snr(scheduler, timesteps), max=DEBIAS_SNR_CAP)
    return 1 / (snr + 1) if prediction_type == "v_prediction" else 1 / torch.sqrt(snr)


def zero_terminal_snr_scheduler(scheduler):
    """The same noise schedule rescaled so the last timestep is pure noise (Lin et al. 2023, Algorithm 1),
    through diffusers' own rescale_betas_zero_snr; samplers built from its config inherit the rescale."""
    return type(scheduler).from_config(scheduler.config, rescale_betas_zero_snr=True)


@dataclass(frozen=True)
class Objective:
    """The [training] loss options, read once, applied to each micro-batch by the loop."""
    scheduler: object
    prediction_type: str
    loss: str = "l2"
    huber_c: float = 0.1
    huber_schedule: str = "snr"
    min_timestep: int = 0
    max_timestep: int | None = None
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    noise_offset: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float = 0.0
    min_snr_gamma: float = 0.0
    debiased_estimation: bool = False

    @classmethod
    def from_config(cls, training, scheduler, prediction_type: str) -> "Objective":
        keys = [k for k in cls.__dataclass_fields__ if k not in ("scheduler", "prediction_type")]
        return cls(scheduler, prediction_type, **{k: getattr(training, k) for k in keys})

    def noise(self, latents, generator):
        return sample_noise(latents, generator, self.noise_offset, self.multires_noise_iterations,
                            self.multires_noise_discount)

    def timesteps(self, n: int, generator, device):
        return sample_timesteps(n, self.scheduler, generator, device, self.min_timestep, self.max_timestep,
                                self.timestep_sampling, self.logit_mean, self.logit_std)

    def eval_grid(self) -> list[int]:
        """EVAL_TIMESTEPS placed in the same proportions over the timesteps this objective trains
        ([min_timestep, max_timestep)); over the whole 1000-step range they are EVAL_TIMESTEPS themselves.
        The fixed timesteps of the validation loss (trainer/evaluate.py)."""
        low, high = timestep_range(self.scheduler, self.min_timestep, self.max_timestep)
        return [low + round(t * (high - low) / 1000) for t in EVAL_TIMESTEPS]

    def draw_timesteps(self, latents, generator):
        """The loop's call (every objective has it): timesteps for a batch of `latents`."""
        return self.timesteps(len(latents), generator, latents.device)

    def noisy(self, latents, noise, timesteps, generator):
        return perturbed_noisy_latents(self.scheduler, latents, noise, timesteps, generator, self.ip_noise_gamma)

    def target(self, latents, noise, timesteps):
        return training_target(self.scheduler, self.prediction_type, latents, noise, timesteps)

    def prediction(self, output, noisy, timesteps):
        """The loop's call (every objective has it): a DDPM model's output is compared as it is."""
        return output

    def losses(self, pred, target, timesteps, pixel_weights=None) -> torch.Tensor:
        """Per-example losses (masked per pixel when `pixel_weights` is given), weighted by min-SNR and
        debiased estimation when they are on."""
        huber_c = (huber_thresholds(self.scheduler, timesteps, self.huber_c, self.huber_schedule)
                   if self.loss in ("huber", "smooth_l1") else None)
        losses = example_losses(pred, target, self.loss, huber_c, pixel_weights)
        if self.min_snr_gamma:
            losses = losses * min_snr_weights(self.scheduler, timesteps, self.min_snr_gamma, self.prediction_type)
        if self.debiased_estimation:
            losses = losses * debiased_weights(self.scheduler, timesteps, self.prediction_type)
        return losses

"""validation.loss: the held-out loss is the run's own loss at fixed draws ("training", the default) or plain
MSE ("mse"). Each is checked against its formula written out here by hand (SD's noise schedule from its betas,
the forward process, the Huber and min-SNR formulas) on the tiny model, and default settings give the same
number as the plain yardstick Kiln used before validation.loss existed."""
from __future__ import annotations

import contextlib

import pytest
import torch

from tests.helpers import make_dataset, write_job
from trainer.conditioning import TextConditioner
from trainer.config import load_job
from trainer.data import TrainData
from trainer.evaluate import EVAL_TIMESTEPS, eval_timesteps, fixed_denoising_loss
from trainer.methods import make_method
from trainer.models import load_base_model
from trainer.validation import Validator, split_validation


def sd_alphas_cumprod() -> torch.Tensor:
    """The tiny model's schedule (SD's scaled_linear): betas = linspace(sqrt(b0), sqrt(b1), 1000)^2."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1 - betas, dim=0)


@torch.no_grad()
def hand_validation_loss(model, cfg, held, loss: str, huber_c: float = 0.1, gamma: float = 0.0) -> float:
    """Epsilon prediction; each batch b draws, from a generator seeded validation.seed + b, one Gaussian noise per
    pass d, at timestep EVAL_TIMESTEPS[(b + d + i) % 6] for image i. l2: mean (pred - noise)^2. huber with the
    snr schedule: c_t = (1 - c) / (1 + sigma_t)^2 + c, sigma_t = sqrt((1 - abar_t) / abar_t), elementwise
    2 c_t (sqrt(d^2 + c_t^2) - c_t). min-SNR: each image's mean times min(snr_t, gamma) / snr_t."""
    abar = sd_alphas_cumprod()
    data = TrainData(held, cfg.dataset, cfg.training.batch_size, cfg.validation.seed)
    text = TextConditioner(model.arch, model.tokenizers, model.text_encoders, cache=False)
    passes = []
    for b, batch in enumerate(data.epoch_batches(0)):
        g = torch.Generator().manual_seed(cfg.validation.seed + b)
        latents = model.vae.encode(batch.pixels).latent_dist.mean * model.vae.config.scaling_factor
        hidden, pooled = text.encode(batch.captions, "cpu")
        for d in range(len(EVAL_TIMESTEPS)):
            noise = torch.randn(latents.shape, generator=g)
            t = torch.tensor([EVAL_TIMESTEPS[(b + d + i) % len(EVAL_TIMESTEPS)] for i in range(len(latents))])
            a = abar[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            diff = model.unet(noisy, t, **text.unet_kwargs(batch, hidden, pooled)).sample - noise
            if loss == "l2":
                elementwise = diff**2
            else:
                sigma = ((1 - a) / a).sqrt()
                c = (1 - huber_c) / (1 + sigma) ** 2 + huber_c
                elementwise = 2 * c * ((diff**2 + c**2).sqrt() - c)
            per_image = elementwise.mean(dim=(1, 2, 3))
            if gamma:
                snr = abar[t] / (1 - abar[t])
                per_image = per_image * torch.clamp(snr, max=gamma) / snr
            passes.append(per_image.mean().item())
    return sum(passes) / len(passes)


def setup(tmp_path, tiny_sd15_dir, training=None, validation=None):
    data = make_dataset(tmp_path / "data", n=3)
    held_dir = make_dataset(tmp_path / "held", n=3, seed=5)
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out", sections={
        "training": training or {}, "validation": {"dir": str(held_dir), **(validation or {})}})
    cfg = load_job(job)
    model = load_base_model(cfg.model)
    for module in (model.unet, *model.text_encoders):
        module.eval()
    return cfg, model, split_validation(cfg, None)[1]


def validate(cfg, model, held) -> float:
    validator = Validator(cfg, model, make_method(cfg), held)
    loss, improved = validator.validate(1, contextlib.nullcontext)
    assert improved
    again, improved = validator.validate(2, contextlib.nullcontext)
    assert again == loss and not improved, "fixed draws: the same weights give the same number"
    return loss


def test_default_settings_give_the_plain_mse_of_before(tmp_path, tiny_sd15_dir):
    cfg, model, held = setup(tmp_path, tiny_sd15_dir)
    assert cfg.validation.loss == "training"
    got = validate(cfg, model, held)
    assert got == pytest.approx(hand_validation_loss(model, cfg, held, "l2"), rel=1e-5)
    # the yardstick as it was (no objective): with default loss settings "training" is that number exactly
    data = TrainData(held, cfg.dataset, cfg.training.batch_size, cfg.validation.seed)
    assert got == fixed_denoising_loss(model, data, seed=cfg.validation.seed)


def test_a_huber_run_is_validated_by_its_huber_loss_and_min_snr_weights(tmp_path, tiny_sd15_dir):
    training = {"loss": "huber", "huber_c": 0.2, "huber_schedule": "snr", "min_snr_gamma": 5.0}
    cfg, model, held = setup(tmp_path, tiny_sd15_dir, training)
    got = validate(cfg, model, held)
    expected = hand_validation_loss(model, cfg, held, "huber", huber_c=0.2, gamma=5.0)
    assert got == pytest.approx(expected, rel=1e-5)
    mse = hand_validation_loss(model, cfg, held, "l2")
    assert abs(got - mse) > 0.1 * mse, "the Huber + min-SNR number must differ from MSE, or the check proves nothing"
    # validation.loss = "mse" judges the same run by plain MSE
    mse_cfg = load_job(cfg.source, ["validation.loss=mse"])
    assert validate(mse_cfg, model, held) == pytest.approx(mse, rel=1e-5)


def test_training_loss_timesteps_follow_the_trained_range(tmp_path, tiny_sd15_dir):
    from trainer.diffusion import Objective

    cfg, model, _ = setup(tmp_path, tiny_sd15_dir, {"min_timestep": 100, "max_timestep": 500})
    objective = Objective.from_config(cfg.training, model.noise_scheduler, model.prediction_type)
    assert eval_timesteps(objective) == [120, 180, 260, 340, 420, 480]  # 100 + t x 400 / 1000
    assert eval_timesteps(Objective(model.noise_scheduler, "epsilon")) == list(EVAL_TIMESTEPS)


def test_validation_loss_without_validation_images_is_flagged(tmp_path):
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out",
                    sections={"validation": {"loss": "mse"}})
    assert ('validation.loss = "mse" but there are no validation images (set validation.split or validation.dir)'
            in load_job(job).warnings)

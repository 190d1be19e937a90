"""SDXL and SD 2.x through the same loop: SDXL LoRA export reloads in diffusers; SD 2.x trains on v."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import make_dataset, write_job
from trainer import diffusion
from trainer.conditioning import TextConditioner
from trainer.config import load_job
from trainer.loop import default_paths, train


class _SizedBatch:
    def __init__(self, n, size=64):
        self.original_sizes = [(size, size)] * n
        self.crop_top_lefts = [(0, 0)] * n
        self.target_sizes = [(size, size)] * n


def sdxl_unet_outputs(unet, text_encoders, tokenizers, prompt="kiln shape, shape 2"):
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([20, 640])
    text = TextConditioner("sdxl", tokenizers, text_encoders, cache=False)
    with torch.no_grad():
        hidden, pooled = text.encode([prompt] * 2, "cpu")
        return unet(latents, timesteps, **text.unet_kwargs(_SizedBatch(2), hidden, pooled)).sample


@pytest.mark.parametrize("train_te", [False, True], ids=["unet-only", "both-text-encoders"])
def test_sdxl_lora_reloads_in_diffusers(tmp_path, tiny_sdxl_dir, train_te):
    from diffusers import StableDiffusionXLPipeline

    data = make_dataset(tmp_path / "data")
    job = write_job(tmp_path / "job.toml", tiny_sdxl_dir, data, tmp_path / "out",
                    sections={"lora": {"rank": 4, "alpha": 2, "train_text_encoder": train_te}})
    _, result = train_job(job)
    final = result.outputs[-1]
    keys = load_file(final).keys()
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)  # original SDXL names, as Kohya writes
    assert any(k.startswith("lora_te1_text_model_") for k in keys) == train_te
    assert any(k.startswith("lora_te2_text_model_") for k in keys) == train_te
    with safe_open(final, "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"

    m = result.model
    trained = sdxl_unet_outputs(m.unet, m.text_encoders, m.tokenizers)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    encoders, tokenizers = [pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2]
    base = sdxl_unet_outputs(pipe.unet, encoders, tokenizers)
    pipe.load_lora_weights(str(final))
    loaded = sdxl_unet_outputs(pipe.unet, encoders, tokenizers)
    assert (trained - base).abs().max() > 1e-4
    assert torch.allclose(loaded, trained, atol=1e-5, rtol=0), (loaded - trained).abs().max()


def train_job(job_path):
    cfg = load_job(job_path)
    return cfg, train(cfg, default_paths(cfg))


def test_v_prediction_target_matches_hand_computation():
    from trainer.models.tiny import make_tiny

    scheduler = make_tiny("sd2")["scheduler"]
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler.from_config(scheduler.config)
    assert ddpm.config.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([1, 500, 999])
    abar = ddpm.alphas_cumprod[t].view(-1, 1, 1, 1)
    by_hand = abar.sqrt() * noise - (1 - abar).sqrt() * x0  # v = sqrt(abar) eps - sqrt(1 - abar) x0
    assert torch.allclose(diffusion.training_target(ddpm, "v_prediction", x0, noise, t), by_hand, atol=1e-6)
    assert torch.equal(diffusion.training_target(ddpm, "epsilon", x0, noise, t), noise)


def test_sd2_job_trains_on_v(tmp_path, monkeypatch):
    from trainer.models.tiny import save_tiny_model

    base = save_tiny_model(tmp_path / "tiny-sd2.safetensors", arch="sd2", fmt="single-file")
    seen = []
    real = diffusion.training_target

    def spy(scheduler, prediction_type, *args):
        seen.append(prediction_type)
        return real(scheduler, prediction_type, *args)

    monkeypatch.setattr(diffusion, "training_target", spy)
    job = write_job(tmp_path / "job.toml", base, make_dataset(tmp_path / "data"), tmp_path / "out",
                    sections={"training": {"max_steps": 2}})
    _, result = train_job(job)
    assert seen and set(seen) == {"v_prediction"}
    with safe_open(result.outputs[-1], "pt") as f:
        meta = f.metadata()
    assert meta["ss_v2"] == "True" and meta["modelspec.prediction_type"] == "v"
    assert meta["ss_base_model_version"] == "sd_v2"


@pytest.mark.parametrize("arch,sizes", [("sd15", (512, 256, 1024)), ("sd2", (768, 384, 1536)),
                                        ("sdxl", (1024, 512, 2048))])
def test_sizes_left_at_zero_follow_the_model(tmp_path, arch, sizes):
    from trainer.models.tiny import save_tiny_model
    from trainer.preflight import preflight_report

    base = save_tiny_model(tmp_path / f"tiny-{arch}.safetensors", arch=arch, fmt="single-file")
    job = write_job(tmp_path / "job.toml", base, make_dataset(tmp_path / "data"), tmp_path / "out")
    text = job.read_text()
    for key in ("resolution", "min_bucket_reso", "max_bucket_reso"):  # leave them to the model
        text = "\n".join(line for line in text.splitlines() if not line.startswith(key))
    job.write_text(text)
    cfg = load_job(job)
    assert (cfg.dataset.resolution, cfg.dataset.min_bucket_reso, cfg.dataset.max_bucket_reso) == (0, 0, 0)
    report = preflight_report(cfg)
    resolution, low, high = sizes
    assert f"resolution = {resolution}\n" in report
    assert f"min_bucket_reso = {low}\n" in report and f"max_bucket_reso = {high}\n" in report

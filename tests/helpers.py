"""Shared test material: a tiny model on disk, a small generated dataset, and job files."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw


def make_dataset(root: Path, n: int = 4, size: int = 64, caption: str = "kiln shape", seed: int = 0) -> Path:
    """n coloured shapes on a plain ground, each with a .txt caption."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (size, size), (230, 220, 200))
        d = ImageDraw.Draw(im)
        x, y, r = rng.randint(20, size - 20), rng.randint(20, size - 20), rng.randint(8, 16)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(rng.randint(0, 255), 40, 200 - i * 30))
        im.save(root / f"img_{i}.png")
        (root / f"img_{i}.txt").write_text(f"{caption}, shape {i}")
    return root


def write_job(path: Path, base: Path | str, dataset: Path, output: Path, *, method: str = "lora",
              sections: dict | None = None) -> Path:
    """A small CPU job: 64 px, fp32, AdamW. `sections` overrides/extends keys per section."""
    import toml

    job = {
        "method": method,
        "version": 2,
        "model": {"base": str(base)},
        "dataset": {"dir": str(dataset), "resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128,
                    "bucket_reso_steps": 32},
        "training": {"max_steps": 6, "batch_size": 2, "learning_rate": 1e-3, "optimizer": "adamw",
                     "mixed_precision": "no", "seed": 7},
        "lora": {"rank": 4, "alpha": 2},
        "output": {"dir": str(output), "name": "test-lora", "save_precision": "fp32"},
    }
    for section, values in (sections or {}).items():
        if isinstance(values, dict):
            job.setdefault(section, {}).update(values)
        else:
            job[section] = values
    path.write_text(toml.dumps(job))
    return path


def save_unit_scale_tiny_model(folder: Path, arch: str, latent_scale: float) -> Path:
    """A tiny model whose VAE is deterministic and whose scaled latents have about unit scale, like a real
    SD VAE's. The random tiny VAE's latents are so small that denoising hardly depends on the image, which
    hides what prior preservation or a learned token does."""
    import torch
    from diffusers import StableDiffusionPipeline

    from trainer.models.tiny import make_tiny

    components = make_tiny(arch, seed=0)
    vae = components["vae"]
    channels = vae.config.latent_channels
    with torch.no_grad():  # quant_conv's second half is the log-variance: pinned at -30, std ~3e-7
        vae.quant_conv.weight[channels:] = 0
        vae.quant_conv.bias[channels:] = -30.0
    vae.register_to_config(scaling_factor=latent_scale)
    StableDiffusionPipeline(**components).save_pretrained(folder, safe_serialization=True)
    return folder


def square_images(root: Path, n: int, seed: int = 1) -> Path:
    """Squares of varying colour and place on a grey ground, no captions: a DreamBooth 'class'."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (64, 64), (128, 128, 128))
        x, y = rng.randint(8, 36), rng.randint(8, 36)
        ImageDraw.Draw(image).rectangle([x, y, x + 20, y + 20], fill=(40, rng.randint(0, 255), 90))
        image.save(root / f"square_{i}.png")
    return root


def wait_for(predicate, timeout_s: float = 240.0, what: str = "condition", poll_s: float = 0.05):
    """The predicate's first truthy value, polling until timeout_s; an AssertionError naming `what` after."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


class StopAt:
    """Training controls that ask for a graceful stop at the given poll (after that step)."""

    def __init__(self, step: int):
        self.step, self.polls = step, 0

    def poll(self) -> list[str]:
        self.polls += 1
        return ["stop"] if self.polls == self.step else []


def subject_images(root: Path, n: int = 2) -> Path:
    """Subject images without caption files, so DreamBooth's instance prompt captions them."""
    make_dataset(root, n=n)
    for caption in root.glob("*.txt"):
        caption.unlink()
    return root


def load_export_into(pipe, arch: str, kind: str, file: Path, config_dir: Path, token: str = "", dtype=None):
    """A trained file in a diffusers pipeline of its base model, the way each consumer loads it. kind: "lora"
    (Kohya LoRA), "checkpoint" (a DreamBooth single file: a new pipeline of `pipe`'s class, which may be the
    class itself, in `dtype`) or "embedding" (textual inversion)."""
    from safetensors.torch import load_file

    if kind == "lora":
        pipe.load_lora_weights(str(file))
        return pipe
    if kind == "checkpoint":
        cls = pipe if isinstance(pipe, type) else type(pipe)
        return cls.from_single_file(str(file), config=str(config_dir), local_files_only=True, torch_dtype=dtype)
    if arch == "sdxl":  # one tensor per encoder, each loaded into its encoder and tokenizer
        tensors = load_file(file)
        pipe.load_textual_inversion(tensors["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(tensors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
    else:
        pipe.load_textual_inversion(str(file), token=token)
    return pipe


def free_port() -> int:
    """A free TCP port for a distributed test run, drawn at random below Linux's ephemeral range. Not bind(0):
    two tests asking at the same moment (pytest-xdist) are often handed the same just-released port, and a rank
    of one run then joins the other's rendezvous and both hang."""
    import random
    import socket

    rng = random.SystemRandom()
    while True:
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def learn_losses(job: Path, controls=None, resume: bool = False):
    """A learn test's measurement: the fixed-noise denoising loss (trainer.evaluate) of the job's base model and of
    the model the job trains, on the job's own images. Returns (before, after, the train result)."""
    from trainer.config import load_job
    from trainer.data import TrainData, scan_dataset
    from trainer.evaluate import fixed_denoising_loss
    from trainer.loop import default_paths, train
    from trainer.models import load_base_model

    cfg = load_job(job)
    eval_data = TrainData(scan_dataset(cfg.dataset), cfg.dataset, 3, seed=0)
    before = fixed_denoising_loss(load_base_model(cfg.model), eval_data)
    result = train(cfg, default_paths(cfg), controls=controls, resume=resume)
    return before, fixed_denoising_loss(result.model, eval_data), result

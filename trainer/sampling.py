"""Preview images while training, from Kohya-style prompt lines:
`a photo of sks dog --n blurry, lowres --w 512 --h 768 --s 28 --l 6.5 --d 1234`."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL.PngImagePlugin import PngInfo

from . import offload
from .atomic import write_atomically
from .config.prompt_line import OPTIONS, SamplePrompt, parse_prompt_line  # noqa: F401 (re-exported)
from .families import DDPM, adapter_for, family

SAMPLERS = {  # [sample] sampler -> (diffusers scheduler class name, name shown in A1111-style metadata)
    "euler_a": ("EulerAncestralDiscreteScheduler", "Euler a"),
    "euler": ("EulerDiscreteScheduler", "Euler"),
    "ddim": ("DDIMScheduler", "DDIM"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", "DPM++ 2M"),
}


def sample_defaults(cfg) -> SamplePrompt:
    s, res = cfg.sample, cfg.dataset.resolution
    return SamplePrompt("", "", res, res, s.steps, s.cfg_scale, s.seed)


def make_pipeline(model, sampler: str):
    """A diffusers pipeline over the model being trained with one of SAMPLERS, configured as its schedule."""
    import diffusers

    if family(model.arch).objective != DDPM:  # the samplers below are DDPM schedules: flow models use their own
        return pipeline_over(model, None)
    scheduler = getattr(diffusers, SAMPLERS[sampler][0]).from_config(model.noise_scheduler.config)
    return pipeline_over(model, scheduler)


def pipeline_over(model, scheduler):
    """The family's diffusers pipeline around the model's own modules (shared, nothing copied or loaded) and
    `scheduler` (None: the family's own); no safety checker. Previews, grids, evaluation and class images all
    build theirs here."""
    return adapter_for(model.arch).pipeline(model, scheduler)


def png_parameters(p: SamplePrompt, sampler: str, step: int) -> str:
    """The A1111 "parameters" text, so the PNG's settings show in A1111's PNG Info and similar tools."""
    negative = f"\nNegative prompt: {p.negative}" if p.negative else ""
    return (f"{p.prompt}{negative}\nSteps: {p.steps}, Sampler: {SAMPLERS[sampler][1]}, CFG scale: {p.cfg_scale:g}, "
            f"Seed: {p.seed}, Size: {p.width}x{p.height}, Kiln step: {step}")


@torch.no_grad()
def generate_samples(model, cfg, step: int, out_dir: Path, autocast) -> list[tuple[Path, SamplePrompt]]:
    """One PNG per prompt line, written atomically into out_dir; returns (path, settings) pairs."""
    defaults = sample_defaults(cfg)
    prompts = [parse_prompt_line(line, defaults) for line in cfg.sample.prompts if line.strip()]
    if not prompts:
        return []
    pipe = make_pipeline(model, cfg.sample.sampler)
    pipe.set_progress_bar_config(disable=True)
    device = next(model.unet.parameters()).device
    was_training = model.unet.training
    model.unet.eval()
    try:
        # The VAE and text encoders may be parked (their outputs cached): borrowed for the previews only.
        with offload.on_device([model.vae, *model.text_encoders], device):
            return [(write_sample(pipe, p, cfg, step, i, out_dir, device, autocast), p) for i, p in enumerate(prompts)]
    finally:
        model.unet.train(was_training)


def write_sample(pipe, p: SamplePrompt, cfg, step: int, number: int, out_dir: Path, device, autocast) -> Path:
    """One preview PNG, with its settings as A1111 "parameters" text."""
    generator = torch.Generator(device).manual_seed(p.seed)
    with autocast():
        image = pipe(p.prompt, negative_prompt=p.negative or None, width=p.width, height=p.height,
                     num_inference_steps=p.steps, guidance_scale=p.cfg_scale, generator=generator).images[0]
    info = PngInfo()
    info.add_text("parameters", png_parameters(p, cfg.sample.sampler, step))
    path = out_dir / f"{cfg.output.name}-step{step:08d}-{number:02d}.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))

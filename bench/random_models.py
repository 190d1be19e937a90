"""Real architectures with random weights, built from Kiln's bundled configs (nothing downloaded): the models
the full-size benches train. Random weights make noise, but every tensor has its real shape and size, so time
and memory are those of the real model."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trainer.models.config_dir import TEXT_ENCODER_NAMES, bundled_config_files, tokenizers_for  # noqa: E402


def make_random_components(arch: str, device: str = "cpu", seed: int = 0) -> dict:
    """Pipeline components of the full-size `arch`, random weights, built directly on `device` (fast on a GPU)."""
    import diffusers
    import transformers

    files = bundled_config_files(arch)
    index = files["model_index.json"]
    torch.manual_seed(seed)
    components = {}
    with torch.device(device):
        components["unet"] = diffusers.UNet2DConditionModel.from_config(files["unet/config.json"])
        components["vae"] = diffusers.AutoencoderKL.from_config(files["vae/config.json"])
        for name in TEXT_ENCODER_NAMES[arch]:
            cls = getattr(transformers, index[name][1])
            config = cls.config_class.from_dict(files[f"{name}/config.json"])
            components[name] = cls(config)
    scheduler_cls = getattr(diffusers, index["scheduler"][1])
    components["scheduler"] = scheduler_cls.from_config(files["scheduler/scheduler_config.json"])
    for name, tokenizer in zip(["tokenizer", "tokenizer_2"], tokenizers_for(arch)):
        components[name] = tokenizer
    return components


def pipeline_class(arch: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline


def save_random_model(folder: Path, arch: str, fmt: str = "diffusers", device: str = "cpu",
                      dtype: torch.dtype = torch.float16) -> Path:
    """Write a random full-size model as a diffusers folder or one original-layout .safetensors file."""
    components = make_random_components(arch, device)
    for value in components.values():
        if isinstance(value, torch.nn.Module):
            value.to("cpu", dtype)
    if fmt == "single-file":
        from trainer.models import write_single_file

        return write_single_file(folder.with_suffix(".safetensors"), arch, components, {"kiln_notice": "random"},
                                 dtype=dtype)
    extra = {} if arch == "sdxl" else {"safety_checker": None, "feature_extractor": None,
                                       "requires_safety_checker": False}
    pipeline_class(arch)(**components, **extra).save_pretrained(folder, safe_serialization=True)
    return folder

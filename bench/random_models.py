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
    """The diffusers pipeline of family `arch` (the family's adapter knows it)."""
    from trainer.families import adapter_for

    return adapter_for(arch).pipeline_class()


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


# The transformer families' bundled configs (trainer/models/configs/<name>) and the family each belongs to.
FLOW_CONFIGS = {"flux-dev": "flux", "flux-schnell": "flux", "chroma": "chroma", "sd3-medium": "sd3",
                "sd35-medium": "sd3", "sd35-large": "sd3"}


def make_random_flow_components(config: str, device: str = "cpu", dtype: torch.dtype = torch.bfloat16,
                                depth: tuple[int, int] | None = None, t5_layers: int | None = None,
                                seed: int = 0) -> dict:
    """Pipeline components of a full-size SD 3 / Flux.1 / Chroma from its bundled configs, random weights, built
    straight in `dtype` on `device` (a 12 B Flux never exists in fp32). `depth` = (double or joint blocks,
    single blocks) and `t5_layers` cut the depth at full width: a Flux whose blocks are the real ones but fits
    a 24 GB CPU machine (T5-XXL alone is 19 GB in fp32). The T5 tokenizer is Kiln's tiny
    offline one: Kiln bundles no T5 vocabulary, and its ids all exist in the real 32,128-entry embedding."""
    import diffusers
    import transformers

    from trainer.families import family
    from trainer.families.dit.t5 import tiny_t5_tokenizer
    from trainer.models.tokenizers import clip_tokenizer, openclip_tokenizer

    files = bundled_config_files(config)
    index = files["model_index.json"]
    transformer_config = dict(files["transformer/config.json"])
    if depth is not None:
        transformer_config["num_layers"] = depth[0]
        if "num_single_layers" in transformer_config:
            transformer_config["num_single_layers"] = depth[1]
    tokenizer_of = {"clip-l": clip_tokenizer, "openclip-g": openclip_tokenizer, "t5-xxl": tiny_t5_tokenizer}
    torch.manual_seed(seed)
    components: dict = {}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype: no fp32 copy of the model ever exists
    try:
        with torch.device(device):
            components["transformer"] = getattr(diffusers, index["transformer"][1]).from_config(transformer_config)
            components["vae"] = getattr(diffusers, index["vae"][1]).from_config(files["vae/config.json"])
            for te in family(FLOW_CONFIGS[config]).text_encoders:
                cls = getattr(transformers, index[te.component][1])
                values = dict(files[f"{te.component}/config.json"])
                if cls is transformers.T5EncoderModel and t5_layers is not None:
                    values["num_layers"] = t5_layers
                components[te.component] = cls(cls.config_class.from_dict(values))
                components[te.tokenizer] = tokenizer_of.get(te.kind, clip_tokenizer)()
    finally:
        torch.set_default_dtype(previous)
    components["scheduler"] = getattr(diffusers, index["scheduler"][1]).from_config(
        files["scheduler/scheduler_config.json"])
    return components


def save_random_flow_model(folder: Path, config: str, device: str = "cpu", dtype: torch.dtype = torch.bfloat16,
                           **options) -> Path:
    """A random full-size (or cut-depth) SD 3 / Flux / Chroma as a diffusers folder. Built on `device` in
    `dtype` and written by diffusers' sharded save_pretrained, one shard at a time (host RAM stays near one
    shard above the model, the disk holds the model once)."""
    from trainer.families import adapter_for

    components = make_random_flow_components(config, device, dtype, **options)
    pipeline = adapter_for(FLOW_CONFIGS[config]).pipeline_class()(**components)
    pipeline.save_pretrained(folder, safe_serialization=True)
    del pipeline, components
    if device != "cpu":
        torch.cuda.empty_cache()
    return folder

"""Tiny random Stable Diffusion models: the same architectures at toy size, for tests, the demo preset and
smoke-testing an install. They make noise, not pictures, and every file they write says so."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..atomic import write_folder_atomically
from ..families import DEFAULT_FAMILY, FAMILY_IDS, adapter_for, family
from .errors import ModelError
from .single_file import write_single_file
from .tokenizers import clip_tokenizer, openclip_tokenizer

TINY_NOTICE = "Kiln tiny random model: random weights, for tests and demos; it generates noise, not images."
TINY_ARCHES = FAMILY_IDS  # each family's adapter makes its tiny model (make_tiny)
TINY_FORMATS = ("diffusers", "single-file", "split-files")  # split-files: the transformer families' separate files


def _tiny_text_encoder(hidden: int = 32, projection: int | None = None, with_projection: bool = False,
                       activation: str = "quick_gelu") -> CLIPTextModel | CLIPTextModelWithProjection:
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=projection or hidden,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act=activation)
    return CLIPTextModelWithProjection(cfg) if with_projection else CLIPTextModel(cfg)


def _tiny_vae() -> AutoencoderKL:
    # Four blocks, so latents are 1/8 of the image as in the real VAEs (and the UNet stays cheap on a CPU).
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, norm_num_groups=8, sample_size=64)


def _tiny_scheduler() -> DDPMScheduler:
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, steps_offset=1, clip_sample=False)


def make_tiny_sd15(seed: int = 0) -> dict:
    """Components of a tiny SD 1.x model (epsilon prediction), ready for StableDiffusionPipeline(**c)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    vae = _tiny_vae()
    return dict(unet=unet, vae=vae, text_encoder=_tiny_text_encoder(), tokenizer=clip_tokenizer(),
                scheduler=_tiny_scheduler(), safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def make_tiny_sd2(seed: int = 0) -> dict:
    """Components of a tiny SD 2.x model: OpenCLIP-style text encoder (gelu, "!" padding), linear attention
    projections and v-prediction, ready for StableDiffusionPipeline(**c)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    scheduler = DDPMScheduler.from_config(_tiny_scheduler().config, prediction_type="v_prediction")
    return dict(unet=unet, vae=_tiny_vae(), text_encoder=_tiny_text_encoder(activation="gelu"),
                tokenizer=openclip_tokenizer(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def make_tiny_sdxl(seed: int = 0) -> dict:
    """Components of a tiny SDXL model, ready for StableDiffusionXLPipeline(**c). As in the real one, the two
    text encoders differ in width (the single-file loader tells them apart by it), the UNet attends to both
    concatenated, and its time-text embedding takes six size/crop embeddings plus the pooled second encoder."""
    torch.manual_seed(seed)
    hidden_1, hidden_2, time_dim = 32, 64, 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=hidden_1 + hidden_2, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + hidden_2, norm_num_groups=8)
    return dict(unet=unet, vae=_tiny_vae(), text_encoder=_tiny_text_encoder(hidden_1),
                text_encoder_2=_tiny_text_encoder(hidden_2, with_projection=True), tokenizer=clip_tokenizer(),
                tokenizer_2=openclip_tokenizer(), scheduler=_tiny_scheduler(), image_encoder=None,
                feature_extractor=None, force_zeros_for_empty_prompt=True)


def make_tiny(arch: str, seed: int = 0) -> dict:
    """Components of the tiny model of family `arch` (its adapter makes them)."""
    if arch not in FAMILY_IDS:
        raise ModelError(f"no tiny model for arch {arch!r}; expected one of {', '.join(TINY_ARCHES)}")
    try:
        return adapter_for(arch).make_tiny(seed)
    except NotImplementedError as exc:
        raise ModelError(f"no tiny model for arch {arch!r} in this build: {exc}") from exc


def save_tiny_model(out: Path | str, arch: str = DEFAULT_FAMILY.id, fmt: str = "diffusers", seed: int = 0) -> Path:
    """Write a tiny random model as a diffusers folder or one original-layout .safetensors file, atomically,
    never over an existing path. The notice that it makes noise goes in README.txt / the file's metadata."""
    out = Path(out)
    if fmt not in TINY_FORMATS:
        raise ModelError(f"unknown tiny-model format {fmt!r}; expected one of {', '.join(TINY_FORMATS)}")
    if out.exists():
        raise ModelError(f"refusing to overwrite {out}: it already exists")
    if not out.parent.is_dir():
        raise ModelError(f"cannot write {out}: folder {out.parent} does not exist")
    if fmt == "split-files" and family(arch).denoiser_component == "unet":
        raise ModelError(f"--format split-files writes the separate files of SD 3 / Flux / Chroma models; "
                         f"{family(arch).label} checkpoints are one file (--format single-file)")
    components = make_tiny(arch, seed)
    if fmt == "single-file":
        if out.suffix != ".safetensors":
            raise ModelError(f"a single-file model must end in .safetensors, got {out}")
        if family(arch).denoiser_component == "unet":  # the original SD layout this package writes
            return write_single_file(out, arch, components, metadata={"kiln_notice": TINY_NOTICE})
        adapter_for(arch).save_tiny(components, out, fmt)  # the family's own layout, written atomically
        return out

    def write(folder: Path) -> None:
        adapter_for(arch).save_tiny(components, folder, fmt)
        (folder / "README.txt").write_text(TINY_NOTICE + "\n")

    return write_folder_atomically(out, write)

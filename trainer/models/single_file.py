"""Writer from diffusers components to the original single-file Stable Diffusion layout (the one ComfyUI,
AUTOMATIC1111 and `from_single_file` read). The installed diffusers only converts the other way, so the key
mapping is written here, built from each model's config so that it serves the real and the tiny models alike.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ..atomic import write_atomically
from .config_dir import component_config_files
from ..families import FAMILIES, family
from .errors import ModelError
from .safetensors_stream import write_safetensors_streaming

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# per UNet family (the original SD layout this module writes), one per text encoder, in pipeline order
TEXT_ENCODER_PREFIXES = {f.id: [te.single_file_prefix for te in f.text_encoders]
                         for f in FAMILIES.values() if f.denoiser_component == "unet"}
OPENCLIP_PREFIXES = {"cond_stage_model.model.", "conditioner.embedders.1.model."}
METADATA_CONFIGS_KEY = "kiln_configs"  # JSON of the component config files, so a file reloads at its own size
METADATA_ARCH_KEY = "kiln_arch"

_UNET_RESNET_RENAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                        "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET_RENAMES = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_LAYER_RENAMES = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                           "self_attn.out_proj": "attn.out_proj"}

# A block map sends a diffusers module prefix to (original prefix, renames of the first names below it).
BlockMap = dict[str, tuple[str, dict[str, str]]]


def _layers_per_block(unet_config: Mapping[str, Any]) -> int:
    layers = unet_config["layers_per_block"]
    if not isinstance(layers, int):  # the original layout numbers blocks assuming one count for all
        raise ModelError(f"UNet layers_per_block={layers!r}: the single-file layout needs one number for all blocks")
    return layers


def unet_block_map(unet_config: Mapping[str, Any]) -> BlockMap:
    """Module prefixes of a diffusers UNet2DConditionModel → the original (LDM) UNet's, from its config."""
    layers = _layers_per_block(unet_config)
    blocks: BlockMap = {
        "conv_in": ("input_blocks.0.0", {}),
        "time_embedding.linear_1": ("time_embed.0", {}),
        "time_embedding.linear_2": ("time_embed.2", {}),
        "add_embedding.linear_1": ("label_emb.0.0", {}),
        "add_embedding.linear_2": ("label_emb.0.2", {}),
        "mid_block.resnets.0": ("middle_block.0", _UNET_RESNET_RENAMES),
        "mid_block.attentions.0": ("middle_block.1", {}),
        "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET_RENAMES),
        "conv_norm_out": ("out.0", {}),
        "conv_out": ("out.2", {}),
    }
    down_types = unet_config["down_block_types"]
    for b, block_type in enumerate(down_types):
        for layer in range(layers):
            index = 1 + b * (layers + 1) + layer
            blocks[f"down_blocks.{b}.resnets.{layer}"] = (f"input_blocks.{index}.0", _UNET_RESNET_RENAMES)
            if "CrossAttn" in block_type:
                blocks[f"down_blocks.{b}.attentions.{layer}"] = (f"input_blocks.{index}.1", {})
        if b < len(down_types) - 1:
            blocks[f"down_blocks.{b}.downsamplers.0.conv"] = (f"input_blocks.{1 + b * (layers + 1) + layers}.0.op", {})
    up_types = unet_config["up_block_types"]
    for b, block_type in enumerate(up_types):
        has_attention = "CrossAttn" in block_type
        for layer in range(layers + 1):
            index = b * (layers + 1) + layer
            blocks[f"up_blocks.{b}.resnets.{layer}"] = (f"output_blocks.{index}.0", _UNET_RESNET_RENAMES)
            if has_attention:
                blocks[f"up_blocks.{b}.attentions.{layer}"] = (f"output_blocks.{index}.1", {})
        if b < len(up_types) - 1:  # the upsampler follows the block's last layer, after its attention if any
            last = b * (layers + 1) + layers
            blocks[f"up_blocks.{b}.upsamplers.0.conv"] = (f"output_blocks.{last}.{2 if has_attention else 1}.conv", {})
    return blocks


def vae_block_map(vae_config: Mapping[str, Any]) -> BlockMap:
    """Module prefixes of a diffusers AutoencoderKL → the original VAE's (decoder blocks count the other way)."""
    blocks: BlockMap = {}
    for part in ("encoder", "decoder"):
        blocks[f"{part}.conv_norm_out"] = (f"{part}.norm_out", {})
        for name in ("conv_in", "conv_out"):
            blocks[f"{part}.{name}"] = (f"{part}.{name}", {})
        for k in range(2):
            blocks[f"{part}.mid_block.resnets.{k}"] = (f"{part}.mid.block_{k + 1}", _VAE_RESNET_RENAMES)
        blocks[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", _VAE_ATTENTION_RENAMES)
    for name in ("quant_conv", "post_quant_conv"):
        blocks[name] = (name, {})
    layers = vae_config["layers_per_block"]
    n_down = len(vae_config["down_block_types"])
    for i in range(n_down):
        for j in range(layers):
            blocks[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", _VAE_RESNET_RENAMES)
        blocks[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", {})
    n_up = len(vae_config["up_block_types"])
    for i in range(n_up):
        original = n_up - 1 - i
        for j in range(layers + 1):
            blocks[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{original}.block.{j}", _VAE_RESNET_RENAMES)
        blocks[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{original}.upsample.conv", {})
    return blocks


def rename_with_block_map(name: str, blocks: BlockMap) -> str | None:
    """The original name of a diffusers module or parameter name, or None when no block contains it."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in blocks:
            original, renames = blocks[prefix]
            rest = ".".join(parts[cut:])
            for old, new in renames.items():
                if rest == old or rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            return f"{original}.{rest}" if rest else original
    return None


def unet_module_names(unet: torch.nn.Module) -> dict[str, str]:
    """Every named module of a diffusers UNet → its original-layout name, e.g. (SDXL)
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k" → "input_blocks.4.1.transformer_blocks.0.attn1.to_k".
    Containers above the block level (e.g. "down_blocks.0") have no original counterpart and are left out."""
    blocks = unet_block_map(unet.config)
    names = {}
    for name, _ in unet.named_modules():
        original = rename_with_block_map(name, blocks) if name else None
        if original is not None:
            names[name] = original
    return names


def _convert(state_dict: Mapping[str, torch.Tensor], blocks: BlockMap, what: str) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in state_dict.items():
        original = rename_with_block_map(key, blocks)
        if original is None:
            raise ModelError(f"{what} weight {key!r} has no place in the single-file layout")
        converted[original] = tensor
    return converted


def unet_to_original(state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return _convert(state_dict, unet_block_map(unet_config), "UNet")


def vae_to_original(state_dict: Mapping[str, torch.Tensor], vae_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    converted = _convert(state_dict, vae_block_map(vae_config), "VAE")
    for key, tensor in converted.items():  # the original mid-block attention uses 1x1 convolutions
        if ".mid.attn_1." in key and key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            converted[key] = tensor.reshape(*tensor.shape, 1, 1)
    return converted


def _text_model_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection still nests weights under `text_model.`; CLIPTextModel no longer does."""
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


def clip_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP keys (SD 1.x, SDXL's first encoder) are the transformers names under `text_model.`."""
    return _text_model_keys(state_dict)


def openclip_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP text weights → OpenCLIP's names: fused q/k/v, transposed text projection."""
    flat = _text_model_keys(state_dict)
    converted: dict[str, torch.Tensor] = {}
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    for key, tensor in flat.items():
        if key in fixed:
            converted[fixed[key]] = tensor
        elif key == "text_projection.weight":
            converted["text_projection"] = tensor.T.contiguous()
        elif key.startswith("encoder.layers."):
            index, rest = key.removeprefix("encoder.layers.").split(".", 1)
            block = f"transformer.resblocks.{index}."
            if rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
                kind = rest.rsplit(".", 1)[1]  # weight | bias
                if rest.startswith("self_attn.q_proj."):
                    qkv = [flat[f"encoder.layers.{index}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                    converted[f"{block}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
                continue
            for old, new in _OPENCLIP_LAYER_RENAMES.items():
                if rest.startswith(old + "."):
                    converted[block + new + rest[len(old):]] = tensor
                    break
            else:
                raise ModelError(f"text encoder weight {key!r} has no place in the OpenCLIP layout")
        else:
            raise ModelError(f"text encoder weight {key!r} has no place in the OpenCLIP layout")
    return converted


def _text_encoders(arch: str, components: Mapping[str, Any]) -> list[torch.nn.Module]:
    return [components[te.component] for te in family(arch).text_encoders]


def to_original_state_dict(arch: str, components: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """All weights of a pipeline's components under their original single-file names."""
    if arch not in TEXT_ENCODER_PREFIXES:
        raise ModelError(f"unknown architecture {arch!r}; expected one of {sorted(TEXT_ENCODER_PREFIXES)}")
    unet, vae = components["unet"], components["vae"]
    out = {UNET_PREFIX + k: v for k, v in unet_to_original(unet.state_dict(), unet.config).items()}
    out.update({VAE_PREFIX + k: v for k, v in vae_to_original(vae.state_dict(), vae.config).items()})
    for prefix, encoder in zip(TEXT_ENCODER_PREFIXES[arch], _text_encoders(arch, components)):
        convert = openclip_to_original if prefix in OPENCLIP_PREFIXES else clip_to_original
        out.update({prefix + k: v for k, v in convert(encoder.state_dict()).items()})
    return out


def write_single_file(path: Path | str, arch: str, components: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Save pipeline components (unet, vae, text_encoder[, text_encoder_2], scheduler) as one original-layout
    .safetensors file, atomically, floating weights cast to `dtype` when given. The component configs go into
    the metadata so Kiln reloads the file at its own size; other programs ignore them."""
    all_metadata = {"format": "pt", METADATA_ARCH_KEY: arch,
                    METADATA_CONFIGS_KEY: json.dumps(component_config_files(arch, components), sort_keys=True)}
    all_metadata.update(metadata or {})
    # Views of the live weights (no copies), except OpenCLIP's fused q/k/v and transposed projection.
    tensors = to_original_state_dict(arch, components)
    return write_atomically(path, lambda tmp: write_safetensors_streaming(tmp, tensors, all_metadata, dtype))

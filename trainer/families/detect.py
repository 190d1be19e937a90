"""Which family a model is, without loading it: from an original single file's tensor names, or from a
diffusers folder's model_index.json and component configs. Torch-free; raises DetectionError (the model
layer turns it into its ModelError)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class DetectionError(ValueError):
    """The model is none of the families; the message names the source and what was expected."""


_EXPECTED_KEYS = ("expected an original-layout checkpoint: a Stable Diffusion UNet under 'model.diffusion_model.' "
                  "with a text encoder under 'cond_stage_model.transformer.' (SD 1.x), 'cond_stage_model.model.' "
                  "(SD 2.x) or 'conditioner.embedders.' (SDXL); SD 3's 'joint_blocks.'; or Flux/Chroma's "
                  "'double_blocks.' and 'single_blocks.'")
# ComfyUI's all-in-one files keep the transformer under this prefix; BFL's own files have none.
_DIFFUSION_PREFIX = "model.diffusion_model."
_PIPELINE_FAMILY = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "ChromaPipeline": "chroma",
                    "StableDiffusionXLPipeline": "sdxl"}
_TRANSFORMER_FAMILY = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux",
                       "ChromaTransformer2DModel": "chroma"}


def _has_prefix(keys: set[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _transformer_family(keys: set[str]) -> str | None:
    """sd3 / flux / chroma from the block names of a transformer file (bare, or under model.diffusion_model.)."""
    for prefix in ("", _DIFFUSION_PREFIX):
        if _has_prefix(keys, prefix + "joint_blocks."):
            return "sd3"
        if _has_prefix(keys, prefix + "double_blocks.") and _has_prefix(keys, prefix + "single_blocks."):
            # Chroma replaces Flux's per-block modulation with one "distilled guidance" approximator
            return "chroma" if _has_prefix(keys, prefix + "distilled_guidance_layer.") else "flux"
    return None


def family_from_keys(keys: Iterable[str], source: str) -> str:
    """The family id from the key names of an original single-file checkpoint; `source` names the file in the
    error raised for anything else."""
    keys = set(keys)
    transformer = _transformer_family(keys)
    if transformer:
        return transformer
    if not _has_prefix(keys, _DIFFUSION_PREFIX):
        if _has_prefix(keys, "lora_") or any(".lora_" in k for k in keys):
            raise DetectionError(f"{source} is a LoRA, not a base model; {_EXPECTED_KEYS}")
        sample = ", ".join(sorted(keys)[:3]) or "no tensors at all"
        raise DetectionError(f"{source} is not a Stable Diffusion model nor an SD 3 / Flux.1 / Chroma one "
                             f"({sample}, ...); {_EXPECTED_KEYS}")
    if _has_prefix(keys, "conditioner.embedders."):
        if not _has_prefix(keys, "conditioner.embedders.1."):
            raise DetectionError(f"{source} looks like the SDXL refiner (one OpenCLIP text encoder); Kiln trains "
                                 "the SDXL base model, which has two text encoders")
        return "sdxl"
    if _has_prefix(keys, "cond_stage_model.model."):
        return "sd2"
    if _has_prefix(keys, "cond_stage_model.transformer."):
        return "sd15"
    raise DetectionError(f"{source} has a UNet but no text encoder Kiln knows; {_EXPECTED_KEYS}")


def family_from_unet_config(unet_config: Mapping[str, Any], source: str,
                            text_encoder_config: Mapping[str, Any] | None = None) -> str:
    """sd15 / sd2 / sdxl from a diffusers UNet config: SDXL has the text_time embedding; SD 1.x attends to
    768-wide CLIP-L embeddings, SD 2.x to 1024-wide OpenCLIP-H ones. Models of other widths (tiny ones) are told
    apart by their text encoder's activation: OpenAI CLIP uses quick_gelu, OpenCLIP plain gelu."""
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    cross_attention_dim = unet_config.get("cross_attention_dim")
    by_width = {768: "sd15", 1024: "sd2"}
    if cross_attention_dim in by_width:
        return by_width[cross_attention_dim]
    by_activation = {"quick_gelu": "sd15", "gelu": "sd2"}
    activation = (text_encoder_config or {}).get("hidden_act")
    if activation in by_activation:
        return by_activation[activation]
    raise DetectionError(f"{source}: cannot tell the architecture from the UNet config (cross_attention_dim="
                         f"{cross_attention_dim!r}; expected 768 for SD 1.x, 1024 for SD 2.x, or addition_embed_type "
                         "'text_time' for SDXL); set [model] arch explicitly")


def family_from_configs(model_index: Mapping[str, Any], configs: Mapping[str, Mapping[str, Any]], source: str) -> str:
    """The family of a diffusers folder from its model_index.json and component configs ({component: config}):
    the pipeline class or the transformer's class names the new families; UNet folders are told apart by
    their UNet config (family_from_unet_config)."""
    by_pipeline = _PIPELINE_FAMILY.get(model_index.get("_class_name", ""))
    if by_pipeline and by_pipeline != "sdxl":
        return by_pipeline
    transformer = configs.get("transformer") or {}
    if transformer.get("_class_name") in _TRANSFORMER_FAMILY:
        return _TRANSFORMER_FAMILY[transformer["_class_name"]]
    if "unet" in configs:
        return family_from_unet_config(configs["unet"], source, configs.get("text_encoder"))
    raise DetectionError(f"{source}: model_index.json names {model_index.get('_class_name')!r} and there is no "
                         "unet/ or transformer/ config Kiln knows; expected a Stable Diffusion, SD 3, Flux or "
                         "Chroma diffusers folder")


def safetensors_keys(path) -> list[str]:
    """The tensor names of a .safetensors file from its header alone (8-byte length, then JSON), torch-free,
    so the UI and `check` can tell a file's family without importing torch."""
    import json
    import struct

    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 * 1024 * 1024:
            raise DetectionError(f"{path}: not a .safetensors file (header of {length} bytes)")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise DetectionError(f"{path}: not a .safetensors file ({exc})") from None
    return [k for k in header if k != "__metadata__"]


def family_of_source(base: str, builtin: Mapping[str, str]) -> str:
    """The family of a model source without loading weights: builtin ids by name (`builtin`: id -> family),
    diffusers folders from their configs, .safetensors files from their tensor names. DetectionError for what
    only loading tells (hub ids, pickles)."""
    import json
    from pathlib import Path

    if base in builtin:
        return builtin[base]
    path = Path(base).expanduser()
    if path.is_dir():
        def read(rel: str) -> dict:
            file = path / rel
            try:
                return json.loads(file.read_text()) if file.is_file() else {}
            except (OSError, ValueError) as exc:
                raise DetectionError(f"cannot read {file}: {exc}") from None

        configs = {name: read(f"{name}/config.json") for name in ("unet", "transformer", "text_encoder")
                   if (path / name / "config.json").is_file()}
        return family_from_configs(read("model_index.json"), configs, str(path))
    if path.suffix == ".safetensors" and path.is_file():
        return family_from_keys(safetensors_keys(path), str(path))
    raise DetectionError(f"{base}: the architecture is known only once the model is loaded")

"""Load a transformer-family model (Flux, Chroma, SD3) from its single files, offline, and write tiny ones.

A `Layout` says, per family, which pipeline components exist, which text encoder comes from which separate file
(`[model] clip_l`, `clip_g`, `t5xxl`; the VAE from `[model] vae`) and where all-in-one files keep each one.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...atomic import write_atomically
from ...models.config_dir import BUNDLED_CONFIGS
from ...models.errors import ModelError
from ...models.safetensors_stream import write_safetensors_streaming
from ...models.single_file import METADATA_CONFIGS_KEY, vae_to_original
from ...models.tokenizers import clip_tokenizer, openclip_tokenizer
from .components import cast, strip_prefix, text_encoder_from_state_dict, vae_from_state_dict
from .config_dir import component_configs, materialize
from ..detect import DetectionError, family_from_keys
from .detect import DIFFUSION_PREFIX, bundled_variant, transformer_keys
from .t5 import t5_tokenizer_for

FILE_KEYS = {"clip_l": "CLIP-L", "clip_g": "CLIP-G (OpenCLIP bigG)", "t5xxl": "T5-XXL"}


@dataclass(frozen=True)
class TextSlot:
    component: str         # text_encoder, text_encoder_2, text_encoder_3
    tokenizer: str
    file_key: str          # the [model] key naming its separate file: clip_l | clip_g | t5xxl
    required: bool = True  # SD3 runs without T5; nothing else may be left out

    @property
    def prefix(self) -> str:  # where Stability's and ComfyUI's all-in-one files keep it
        return f"text_encoders.{self.file_key}.transformer."


@dataclass(frozen=True)
class Layout:
    family: str
    transformer_class: type
    rows: Callable[[Mapping[str, Any]], list]  # the key table of a transformer config
    text: tuple[TextSlot, ...]
    # original-layout transformer tensors → diffusers ones; by default through the key table
    convert: Callable[[dict, Mapping[str, Any], str], dict] | None = None


def read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file; `what` names the setting it came from when it is missing."""
    from ...models.loading import _read_checkpoint  # the one reader of model files (its messages)
    if not path.is_file():
        raise ModelError(f"{what} not found: {path}")
    return _read_checkpoint(path, allow_pickle=False)


def _tokenizer(slot: TextSlot, encoder, t5_tokenizer: Path | None, source: str):
    if slot.file_key == "t5xxl":
        return t5_tokenizer_for(encoder.config.vocab_size, t5_tokenizer, source=source)
    return openclip_tokenizer() if slot.file_key == "clip_g" else clip_tokenizer()


def _source(slot: TextSlot, files: Mapping[str, str], path: Path) -> str:
    """The key a text encoder's weights come from, as messages name it: its own file, else the model file."""
    file = files.get(slot.file_key) or ""
    return f"model.{slot.file_key} = {file}" if file else f"model.base = {path}"


def file_configs(family: str, names, metadata: Mapping[str, str]) -> dict[str, dict]:
    """The configs a single file's model is built from: those Kiln stored in its metadata, else the bundled ones
    of the full-size variant its key names say it is."""
    if METADATA_CONFIGS_KEY in metadata:
        return json.loads(metadata[METADATA_CONFIGS_KEY])
    return _bundled(bundled_variant(family, names))


def t5_tokenizer_problem(layout: Layout, path: Path, names: list[str], metadata: Mapping[str, str],
                         files: Mapping[str, str], t5_tokenizer: Path | None) -> str | None:
    """For `trainer check`, from the file's header alone: the line loading would fail with because the T5-XXL
    of these single files (model.t5xxl, or inside the model file) has no tokenizer to go with it; None when it
    has one (or there is no T5: another check or SD 3's T5-less run covers that)."""
    for slot in layout.text:
        if slot.file_key != "t5xxl":
            continue
        if not (files.get("t5xxl") or any(n.startswith(slot.prefix) for n in names)):
            return None
        vocab = file_configs(layout.family, names, metadata)[f"{slot.component}/config.json"].get("vocab_size")
        try:
            t5_tokenizer_for(vocab, t5_tokenizer, source=_source(slot, files, path))
        except ModelError as e:
            return str(e)
    return None


def load_single_file(layout: Layout, path: Path, files: Mapping[str, str], dtype: torch.dtype = torch.float32,
                     t5_tokenizer: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Pipeline components (transformer, vae, text encoders, tokenizers, scheduler left out) and a local config
    folder for pipelines. `files` holds the [model] keys clip_l / clip_g / t5xxl / vae ("" when not given)."""
    state_dict, metadata = read_safetensors(path, "model file")
    try:
        family = family_from_keys(state_dict.keys(), str(path))
    except DetectionError as e:
        raise ModelError(str(e)) from e
    if family != layout.family:
        raise ModelError(f"{path} is a {family} checkpoint, not a {layout.family} one")
    configs = file_configs(family, state_dict.keys(), metadata)
    config_dir = materialize(family, configs)
    index = configs["model_index.json"]
    transformer_config = configs["transformer/config.json"]
    names = transformer_keys(state_dict.keys())
    prefix = DIFFUSION_PREFIX if not names <= set(state_dict) else ""
    weights = strip_prefix(state_dict, prefix) if prefix else state_dict
    transformer = layout.transformer_class.from_config(transformer_config)
    if layout.convert is not None:
        converted = layout.convert(dict(weights), transformer_config, str(path))
    else:
        from .keymap import to_diffusers
        converted = to_diffusers(weights, layout.rows(transformer_config), str(path))
    try:
        transformer.load_state_dict(converted, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path} looks like a {family} checkpoint but does not fit the model it names: "
                         f"{str(e).splitlines()[0]}") from e
    components: dict[str, Any] = {"transformer": cast(transformer, dtype)}
    for slot in layout.text:
        encoder = _text_encoder(slot, state_dict, files.get(slot.file_key) or "", configs, index, path, dtype)
        components[slot.component] = encoder
        components[slot.tokenizer] = (None if encoder is None else
                                      _tokenizer(slot, encoder, t5_tokenizer, _source(slot, files, path)))
    vae_file = files.get("vae") or ""
    if vae_file:
        vae_weights, _ = read_safetensors(Path(vae_file).expanduser(), "[model] vae file")
        components["vae"] = vae_from_state_dict(vae_weights, config_dir, vae_file, dtype)
    elif any(k.startswith("first_stage_model.") or k.startswith("vae.") for k in state_dict):
        components["vae"] = vae_from_state_dict(state_dict, config_dir, str(path), dtype)
    else:
        raise ModelError(f"{path} has no VAE inside: set [model] vae to the autoencoder file "
                         "(ae.safetensors for Flux and Chroma, the SD3 VAE for SD3)")
    return components, config_dir


def _bundled(variant: str) -> dict[str, dict]:
    root = BUNDLED_CONFIGS / variant
    return {p.relative_to(root).as_posix(): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))}


def _text_encoder(slot: TextSlot, state_dict, file: str, configs, index, path: Path, dtype):
    import transformers
    cls = getattr(transformers, index[slot.component][1])
    config_dict = dict(configs[f"{slot.component}/config.json"])
    config_class = cls.config_class
    model = cls(config_class.from_dict(config_dict))
    if file:
        weights, _ = read_safetensors(Path(file).expanduser(), f"[model] {slot.file_key} file")
        if any(k.startswith(slot.prefix) for k in weights):
            weights = strip_prefix(weights, slot.prefix)
        return text_encoder_from_state_dict(model, weights, file, dtype)
    if any(k.startswith(slot.prefix) for k in state_dict):
        return text_encoder_from_state_dict(model, strip_prefix(state_dict, slot.prefix), str(path), dtype)
    if not slot.required:
        return None
    raise ModelError(f"{path} has no {FILE_KEYS[slot.file_key]} text encoder inside: set [model] {slot.file_key} "
                     f"to its file (e.g. {slot.file_key}.safetensors)")


def original_tensors(layout: Layout, components: Mapping[str, Any], all_in_one: bool) -> dict[str, dict]:
    """Components → the original single-file layouts: {"transformer": ..., "vae": ..., file_key: ...}, each
    under the all-in-one prefixes when `all_in_one` (then merged into one dict by the caller)."""
    from .keymap import to_original
    transformer = components["transformer"]
    out = {"transformer": to_original(transformer.state_dict(), layout.rows(transformer.config),
                                      DIFFUSION_PREFIX if all_in_one else ""),
           "vae": {("first_stage_model." if all_in_one else "") + k: v
                   for k, v in vae_to_original(components["vae"].state_dict(), components["vae"].config).items()}}
    for slot in layout.text:
        encoder = components.get(slot.component)
        if encoder is None:
            continue
        weights = encoder.state_dict()
        if "CLIP" in type(encoder).__name__:  # files keep transformers 5's CLIPTextModel under text_model.
            weights = {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
                       for k, v in weights.items()}
        out[slot.file_key] = {(slot.prefix if all_in_one else "") + k: v for k, v in weights.items()
                              if not k.endswith("position_ids")}
    return out


def write_single_files(layout: Layout, components: Mapping[str, Any], out: Path, all_in_one: bool,
                       metadata: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write the components as one all-in-one file (`out`) or as the separate files people keep, in the folder
    `out`: transformer.safetensors, ae.safetensors, clip_l/clip_g/t5xxl.safetensors. Configs go in the metadata,
    so Kiln reloads tiny files at their own size."""
    meta = {"format": "pt", METADATA_CONFIGS_KEY: json.dumps(component_configs(components), sort_keys=True),
            **(metadata or {})}
    parts = original_tensors(layout, components, all_in_one)

    def write(path: Path, tensors: dict) -> Path:
        return write_atomically(path, lambda tmp: write_safetensors_streaming(tmp, tensors, meta, None))

    if all_in_one:
        merged = {k: v for tensors in parts.values() for k, v in tensors.items()}
        return {"model": write(out, merged)}
    out.mkdir(parents=True, exist_ok=True)
    names = {"transformer": "transformer.safetensors", "vae": "ae.safetensors"}
    return {part: write(out / names.get(part, f"{part}.safetensors"), tensors) for part, tensors in parts.items()}

"""Load a base model for training from any source a user has: a diffusers folder, one original-layout
.safetensors file (offline, with the bundled configs), a trusted .ckpt pickle, a hub id, or a built-in tiny model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..families import FamilySpec, adapter_for, family
from ..hashing import file_sha256
from ..quantize_load import FOLDER_WHY, SINGLE_FILE_WHY, QuantizedLoad, load_quantized_component, quantized_after
from .arch import ARCH_NAMES, detect_arch_from_keys, detect_arch_from_unet_config
from .config_dir import (TEXT_ENCODER_NAMES, TOKENIZER_NAMES, bundled_config_files, component_config_files,
                         materialize_config_dir, tokenizers_for)
from .errors import ModelError
from .single_file import METADATA_CONFIGS_KEY
from .tiny import TINY_NOTICE, make_tiny

__all__ = ["BaseModel", "ModelError", "load_base_model", "BUILTIN_MODELS"]

from ..config.schema import BUILTIN_MODELS, HUB_ID, PICKLE_SUFFIXES  # noqa: E402  (one list: the UI reads it)
from ..config.sections import ModelSection  # noqa: E402
_TEXT_ENCODER_CLASSES = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
_HUB_FILES = ["model_index.json", "*/config.json", "scheduler/*", "tokenizer*/*", "*/diffusion_pytorch_model.safetensors",
              "text_encoder*/model.safetensors"]


@dataclass
class BaseModel:
    arch: str                      # the family id (trainer/families.FAMILY_IDS)
    unet: torch.nn.Module          # the denoiser: a UNet2DConditionModel, or the family's transformer
    vae: AutoencoderKL
    text_encoders: list[torch.nn.Module]
    tokenizers: list[CLIPTokenizer]
    noise_scheduler: DDPMScheduler
    prediction_type: str           # "epsilon" | "v_prediction"
    name: str                      # file or folder name, for metadata
    hash: str                      # sha256 of the weights file when the source is one file, else ""
    config_dir: Path               # model_index.json + component configs + tokenizers, no weights
    notice: str = ""               # set for Kiln's tiny random models: what they are (they make noise)
    load_note: str = ""            # a quantized load: how the denoiser was quantized (as read, or why after)

    @property
    def family(self) -> FamilySpec:
        return family(self.arch)

    @property
    def adapter(self):
        """The family's torch-side adapter (trainer/families/adapter.py)."""
        return adapter_for(self.arch)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet


@dataclass
class _Loaded:
    """What each source yields before the common finishing steps."""
    arch: str
    components: dict[str, Any]  # unet, vae, text_encoder[, text_encoder_2], tokenizer[, tokenizer_2]
    config_dir: Path
    name: str
    hash: str = ""
    notice: str = ""
    load_note: str = ""


def load_base_model(model_cfg: ModelSection, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, quantize: QuantizedLoad | None = None) -> BaseModel:
    """Load the model that `model_cfg.base` names, frozen and in eval mode, on `device` in `dtype`: by its
    family's adapter when the family is known before loading and its adapter loads models itself (the
    transformer families), else by the Stable Diffusion loader below (which detects SD 1.x/2.x/SDXL as it reads
    the weights, with its own messages). With `quantize`, the denoiser's linear layers come quantized, on the
    host, as they are read where the source allows it (trainer/quantize_load.py); `load_note` says how."""
    found = _family_before_loading(model_cfg)
    if found is not None and family(found).denoiser_component != "unet":
        if model_cfg.arch not in ("auto", found):
            raise ModelError(f"{model_cfg.base} is a {family(found).label} model ({found}) but [model] arch = "
                             f"{model_cfg.arch!r}; set arch = \"auto\" or \"{found}\"")
        return adapter_for(found).load(model_cfg, device, dtype, quantize)
    return load_sd_model(model_cfg, device, dtype, quantize)


def base_load_dtype(model_cfg: ModelSection, weight_dtype: torch.dtype, precision: str) -> torch.dtype:
    """The dtype the training loop asks the loader for: the transformer families (LoRA only: every base weight
    is frozen) under bf16 read their weights straight into bf16, so no fp32 copy of a 12 B-parameter base ever
    sits in host RAM; the VAE's rule (loop.cast_model) is bf16 then too. Everything else loads in fp32 and is
    cast after: under fp16 the VAE must be fp32, and for the SD families a bf16 base would also round the new
    LoRA layers' initial weights (peft casts an adapter to its base layer's dtype), changing their runs."""
    found = _family_before_loading(model_cfg) if precision == "bf16" else None
    if found is not None and family(found).denoiser_component != "unet":
        return weight_dtype
    return torch.float32


def _family_before_loading(model_cfg: ModelSection) -> str | None:
    """The family of the source from names and headers alone, or None when only loading tells."""
    from .arch import detect_arch_of_source

    if model_cfg.arch != "auto" and family(model_cfg.arch).denoiser_component != "unet":
        return model_cfg.arch
    try:
        return detect_arch_of_source(str(model_cfg.base).strip())
    except Exception:  # unknown, unreadable or odd: the SD loader reports it in its own words
        return None


def load_sd_model(model_cfg: ModelSection, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, quantize: QuantizedLoad | None = None) -> BaseModel:
    """An SD 1.x / 2.x / SDXL model from any of its sources (the SD families' adapter loads through this)."""
    loaded = _load_source(model_cfg, dtype, quantize)
    components = loaded.components
    if model_cfg.vae:
        components["vae"] = _load_vae(Path(model_cfg.vae).expanduser(), loaded.config_dir, dtype)
    scheduler_config = json.loads((loaded.config_dir / "scheduler" / "scheduler_config.json").read_text())
    prediction_type = model_cfg.prediction_type
    if prediction_type == "auto":
        prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ModelError(f"{model_cfg.base}: prediction_type {prediction_type!r} is not supported; "
                         "expected \"epsilon\" or \"v_prediction\"")
    # from_config drops the options of the model's own scheduler class (PNDM, Euler, ...) that DDPM lacks
    noise_scheduler = DDPMScheduler.from_config(scheduler_config, prediction_type=prediction_type)
    models = [components["unet"], components["vae"], *(components[n] for n in TEXT_ENCODER_NAMES[loaded.arch])]
    for model in models:
        if next(model.parameters()).dtype != dtype:  # a no-op cast still makes diffusers warn
            model.to(dtype=dtype)
        model.to(device=device).eval().requires_grad_(False)
    return BaseModel(arch=loaded.arch, unet=components["unet"], vae=components["vae"],
                     text_encoders=[components[n] for n in TEXT_ENCODER_NAMES[loaded.arch]],
                     tokenizers=[components[n] for n in TOKENIZER_NAMES[loaded.arch]],
                     noise_scheduler=noise_scheduler, prediction_type=prediction_type, name=loaded.name,
                     hash=loaded.hash, config_dir=loaded.config_dir, notice=loaded.notice,
                     load_note=loaded.load_note)


def _resolve_arch(requested: str, detect: Callable[[], str], source: str) -> str:
    """The requested arch, checked against the detected one before any weights are built. An explicit arch
    wins only where detection cannot decide (a diffusers folder of unusual width)."""
    if requested == "auto":
        return detect()
    if requested not in ARCH_NAMES:
        raise ModelError(f"[model] arch = {requested!r} is unknown; expected auto, {', '.join(ARCH_NAMES)}")
    try:
        detected = detect()
    except ModelError:
        return requested
    if detected != requested:
        raise ModelError(f"{source} is an {ARCH_NAMES[detected]} model ({detected}) but [model] arch = "
                         f"{requested!r}; set arch = \"auto\" or \"{detected}\"")
    return detected


def _load_source(model_cfg: ModelSection, dtype: torch.dtype, quantize: QuantizedLoad | None) -> _Loaded:
    base = str(model_cfg.base).strip()
    if not base:
        raise ModelError("[model] base is empty: give a .safetensors file, a diffusers folder or a hub id")
    if base.startswith("builtin:"):
        loaded = _load_builtin(base, model_cfg.arch)
        if quantize is not None:
            loaded.load_note = quantized_after(quantize.kind, base, "is built in memory")
        return loaded
    path = Path(base).expanduser()
    if path.is_dir():
        return _load_diffusers_folder(path, model_cfg.arch, dtype, quantize)
    if path.is_file():
        loaded = _load_single_file(path, model_cfg, dtype)
        if quantize is not None:
            loaded.load_note = quantized_after(quantize.kind, path.name, SINGLE_FILE_WHY)
        return loaded
    if HUB_ID.fullmatch(base) and not base.startswith((".", "/")):
        return _load_hub_id(base, model_cfg.arch, dtype, quantize)
    raise ModelError(f"model not found: {path} is neither a file nor a folder (nor a hub id like "
                     "\"stabilityai/stable-diffusion-xl-base-1.0\")")


def _load_builtin(base: str, requested_arch: str) -> _Loaded:
    if base not in BUILTIN_MODELS:
        raise ModelError(f"unknown built-in model {base!r}; expected one of {', '.join(BUILTIN_MODELS)}")
    arch = _resolve_arch(requested_arch, lambda: BUILTIN_MODELS[base], base)
    components = make_tiny(arch, seed=0)
    config_dir = materialize_config_dir(arch, component_config_files(arch, components))
    return _Loaded(arch, components, config_dir, name=base.removeprefix("builtin:"), notice=TINY_NOTICE)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {e}") from e


def _load_diffusers_folder(folder: Path, arch: str, dtype: torch.dtype, quantize: QuantizedLoad | None = None) -> _Loaded:
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelError(f"{folder} is a folder without model_index.json; expected a diffusers model folder "
                         "(or give the path of a .safetensors file)")
    model_index = _read_json(index_file)
    text_encoder_file = folder / "text_encoder" / "config.json"
    arch = _resolve_arch(arch, lambda: detect_arch_from_unet_config(
        _read_json(folder / "unet" / "config.json"), str(folder),
        _read_json(text_encoder_file) if text_encoder_file.is_file() else None), str(folder))
    try:
        unet, note = _load_unet(folder, dtype, quantize)
        components: dict[str, Any] = {
            "unet": unet,
            "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype),
        }
        for name in TEXT_ENCODER_NAMES[arch]:
            cls = _TEXT_ENCODER_CLASSES[model_index.get(name, [None, "CLIPTextModel"])[1]]
            components[name] = cls.from_pretrained(folder, subfolder=name, torch_dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot load the {ARCH_NAMES[arch]} diffusers model in {folder}: {e}") from e
    for name, fallback in zip(TOKENIZER_NAMES[arch], tokenizers_for(arch)):
        has_files = (folder / name).is_dir()
        components[name] = CLIPTokenizer.from_pretrained(folder, subfolder=name) if has_files else fallback
    readme = folder / "README.txt"
    notice = readme.read_text().strip() if readme.is_file() and TINY_NOTICE in readme.read_text() else ""
    return _Loaded(arch, components, folder, name=folder.name, notice=notice, load_note=note)


def _load_unet(folder: Path, dtype: torch.dtype, quantize: QuantizedLoad | None) -> tuple[torch.nn.Module, str]:
    """A diffusers folder's UNet, and the line that says how a quantized one was made."""
    if quantize is not None:
        made = load_quantized_component(UNet2DConditionModel, folder, "unet", quantize, dtype)
        if made is not None:
            return made
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    return unet, quantized_after(quantize.kind, f"{folder.name}/unet", FOLDER_WHY) if quantize else ""


def _load_hub_id(repo_id: str, arch: str, dtype: torch.dtype, quantize: QuantizedLoad | None = None) -> _Loaded:
    from huggingface_hub import snapshot_download
    try:  # only the files a diffusers folder needs, not every precision variant the repo carries
        folder = snapshot_download(repo_id, allow_patterns=_HUB_FILES)
    except Exception as e:  # the hub client raises many types (offline, not found, gated, network)
        raise ModelError(f"cannot get hub model {repo_id!r} (no such local path, and the hub download failed: "
                         f"{type(e).__name__}: {e}); download it first or give a local file/folder") from e
    loaded = _load_diffusers_folder(Path(folder), arch, dtype, quantize)
    loaded.name = repo_id
    return loaded


def _read_checkpoint(path: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a single-file checkpoint."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{path} is not a readable .safetensors file: {e}") from e
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelError(f"{path} is a pickle ({suffix}), and loading a pickle can run any code it contains. "
                             "Prefer a .safetensors copy of the model; if you trust this file, set "
                             "[model] allow_pickle = true")
        try:  # the user vouched for the file; old checkpoints pickle training-framework objects besides tensors
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # unpickling can fail in arbitrary ways
            raise ModelError(f"cannot read the pickle {path}: {type(e).__name__}: {e}") from e
        while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
            checkpoint = checkpoint["state_dict"]
        if not isinstance(checkpoint, dict):
            raise ModelError(f"{path} holds a {type(checkpoint).__name__}, not a state dict of tensors")
        return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}, {}
    raise ModelError(f"{path}: unknown model file type {suffix!r}; expected .safetensors "
                     f"(or, with allow_pickle, {'/'.join(PICKLE_SUFFIXES)})")


def _load_single_file(path: Path, model_cfg: ModelSection, dtype: torch.dtype) -> _Loaded:
    state_dict, metadata = _read_checkpoint(path, model_cfg.allow_pickle)
    arch = _resolve_arch(model_cfg.arch, lambda: detect_arch_from_keys(state_dict.keys(), str(path)), str(path))
    files = json.loads(metadata[METADATA_CONFIGS_KEY]) if METADATA_CONFIGS_KEY in metadata else bundled_config_files(arch)
    config_dir = materialize_config_dir(arch, files)
    model_index = files["model_index.json"]
    common = dict(config=str(config_dir), local_files_only=True, torch_dtype=dtype)
    try:
        components: dict[str, Any] = {
            "unet": UNet2DConditionModel.from_single_file(state_dict, subfolder="unet", **common),
            "vae": AutoencoderKL.from_single_file(state_dict, subfolder="vae", **common),
        }
        for name in TEXT_ENCODER_NAMES[arch]:
            cls = _TEXT_ENCODER_CLASSES[model_index[name][1]]
            components[name] = create_diffusers_clip_model_from_ldm(cls, state_dict, subfolder=name, **common)
    except (ValueError, KeyError, RuntimeError) as e:  # missing or mis-shaped weights
        raise ModelError(f"{path} looks like an {ARCH_NAMES[arch]} checkpoint but does not load as one: {e}") from e
    components.update(zip(TOKENIZER_NAMES[arch], tokenizers_for(arch)))
    return _Loaded(arch, components, config_dir, name=path.name, hash=file_sha256(path),
                   notice=metadata.get("kiln_notice", ""))


def _load_vae(path: Path, config_dir: Path, dtype: torch.dtype) -> AutoencoderKL:
    """A replacement VAE: a diffusers folder (its own or a whole model's vae/), or a .safetensors file in the
    diffusers or the original layout (the latter read with the base model's VAE config)."""
    try:
        if path.is_dir():
            subfolder = "vae" if (path / "vae" / "config.json").is_file() else None
            return AutoencoderKL.from_pretrained(path, subfolder=subfolder, torch_dtype=dtype)
        if not path.is_file():
            raise ModelError(f"VAE not found: {path} is neither a file nor a folder")
        state_dict, _ = _read_checkpoint(path, allow_pickle=False)
        if any(k.startswith("encoder.down_blocks.") for k in state_dict):  # already in diffusers names
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir, subfolder="vae"))
            vae.load_state_dict(state_dict, strict=True)
            return vae.to(dtype)
        return AutoencoderKL.from_single_file(state_dict, config=str(config_dir), subfolder="vae",
                                              local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot load the VAE {path}: {e}") from e

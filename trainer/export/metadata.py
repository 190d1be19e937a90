"""Safetensors metadata for exported LoRAs: Kohya's ss_* keys (read by A1111, ComfyUI and Civitai) and the
Stability AI modelspec keys. Every value is a string, as the safetensors header requires."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..config.schema import FIELDS_BY_NAME, FLOAT
from ..families import FAMILY_IDS, family

ARCHES = FAMILY_IDS
# modelspec.prediction_type; flow models have none (sd-scripts leaves the key out for them)
_MODELSPEC_PREDICTION = {"epsilon": "epsilon", "v_prediction": "v", "flow": None}


@dataclass(frozen=True)
class SettingKey:
    """A job setting a LoRA file records, and the metadata key it goes under."""
    setting: str                 # the Kiln key, "training.loss"
    key: str                     # the metadata key, "ss_loss_type"
    kohya: str | None = None     # sd-scripts' argument for the setting (config/kohya.py imports it), if any
    none_when_off: bool = False  # that argument defaults to None, which Kohya writes as "None": Kiln writes
    #                              "None" while the setting is at its default (off), as Kohya does when unset


# The loss/objective settings. Keys are Kohya's: the ss_* key sd-scripts' train_network.py writes for the
# argument, or that its SD3/Flux trainers write (ss_timestep_sampling, ss_logit_mean, ss_logit_std); ss_ +
# the argument's name where sd-scripts has the argument but records nothing (min/max_timestep, masked_loss);
# kiln_ + the key for Kiln's own settings. Values are str() of the setting, floats as floats ("5.0"), as
# Kohya writes its arguments. config/kohya.py maps sd-scripts' *argument* names, which differ from these keys
# (debiased_estimation_loss -> ss_debiased_estimation), so it keeps its own table; `kohya` links the two and
# a test checks both agree.
LOSS_SETTING_KEYS: tuple[SettingKey, ...] = (
    SettingKey("training.loss", "ss_loss_type", "loss_type"),
    SettingKey("training.huber_c", "ss_huber_c", "huber_c"),
    SettingKey("training.huber_schedule", "ss_huber_schedule", "huber_schedule"),
    SettingKey("training.min_snr_gamma", "ss_min_snr_gamma", "min_snr_gamma", none_when_off=True),
    SettingKey("training.debiased_estimation", "ss_debiased_estimation", "debiased_estimation_loss"),
    SettingKey("training.noise_offset", "ss_noise_offset", "noise_offset", none_when_off=True),
    SettingKey("training.multires_noise_iterations", "ss_multires_noise_iterations", "multires_noise_iterations",
               none_when_off=True),
    SettingKey("training.multires_noise_discount", "ss_multires_noise_discount", "multires_noise_discount"),
    SettingKey("training.ip_noise_gamma", "ss_ip_noise_gamma", "ip_noise_gamma", none_when_off=True),
    SettingKey("training.zero_terminal_snr", "ss_zero_terminal_snr", "zero_terminal_snr"),
    SettingKey("training.min_timestep", "ss_min_timestep", "min_timestep", none_when_off=True),
    SettingKey("training.max_timestep", "ss_max_timestep", "max_timestep", none_when_off=True),
    SettingKey("training.timestep_sampling", "ss_timestep_sampling"),
    SettingKey("training.logit_mean", "ss_logit_mean"),
    SettingKey("training.logit_std", "ss_logit_std"),
    SettingKey("dataset.masked_training", "ss_masked_loss", "masked_loss"),
    SettingKey("dataset.unmasked_weight", "kiln_unmasked_weight"),
    SettingKey("dreambooth.prior_loss_weight", "ss_prior_loss_weight", "prior_loss_weight"),
)
# sd-scripts loss switches Kiln has no setting for, as Kohya writes them when off (what Kiln always does:
# Huber thresholds unscaled, fixed noise offset and input perturbation strengths, no adaptive noise scale).
FIXED_LOSS_METADATA: dict[str, Any] = {"ss_huber_scale": 1.0, "ss_adaptive_noise_scale": None,
                                       "ss_noise_offset_random_strength": False,
                                       "ss_ip_noise_gamma_random_strength": False}


@dataclass
class LoraExportInfo:
    """What a LoRA file records about its training. Optional values left as None are written as "None",
    as Kohya does."""

    output_name: str
    rank: int
    alpha: float
    conv_rank: int | None = None               # set when conv layers were trained with their own rank
    conv_alpha: float | None = None
    network_type: str = "lora"                 # "lora" | "locon" | "loha" | "lokr" (LyCORIS' algo names)
    dora: bool = False                         # DoRA magnitudes on the output axis (dora_scale keys)
    lokr_factor: int = -1
    lokr_decompose_both: bool = False
    prediction_type: str = "epsilon"           # "epsilon" | "v_prediction"
    resolution: tuple[int, int] = (512, 512)   # (width, height)
    training_started_at: float = field(default_factory=time.time)   # unix seconds
    training_finished_at: float | None = None  # unix seconds; None: the moment the metadata is built
    steps: int = 0
    epoch: int = 0
    max_train_steps: int = 0
    num_epochs: int = 0
    learning_rate: float = 0.0
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    optimizer: str = ""
    lr_scheduler: str = ""
    mixed_precision: str = "no"                # "fp16" | "bf16" | "no"
    num_train_images: int = 0                  # repeats included, as Kohya counts them
    num_batches_per_epoch: int = 0
    batch_size: int = 1                        # per device
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)  # {subset folder: {tag: count}}
    dataset_dirs: dict[str, tuple[int, int]] = field(default_factory=dict)  # {subset folder: (repeats, images)}
    seed: int | None = None
    # the loss settings by Kiln key (LOSS_SETTING_KEYS' `setting`); one left out is at the schema's default
    loss_settings: dict[str, Any] = field(default_factory=dict)
    clip_skip: int | None = None
    base_model_name: str = ""
    base_model_hash: str = ""                  # sha256 of the base model file (A1111's "new" model hash)
    # the base model's denoiser config (diffusers), where its family names variants in modelspec.architecture
    denoiser_config: dict[str, Any] | None = None
    comment: str | None = None


def modelspec_architecture(arch: str, prediction_type: str, adapter: str,
                           denoiser_config: dict[str, Any] | None = None) -> str:
    """modelspec.architecture, e.g. "stable-diffusion-v1/lora" or "flux-1-dev/lora" (the variant read from
    `denoiser_config`, the base model's); `adapter` is "lora" or "textual-inversion"."""
    _check_arch(arch)
    return f"{family(arch).modelspec_base(prediction_type, denoiser_config)}/{adapter}"


def build_modelspec_metadata(*, arch: str, adapter: str, title: str, resolution: tuple[int, int],
                             prediction_type: str, timestamp: float, clip_skip: int | None = None,
                             denoiser_config: dict[str, Any] | None = None) -> dict[str, str]:
    """The Stability AI modelspec keys for an adapter file (LoRA or textual inversion)."""
    if prediction_type not in _MODELSPEC_PREDICTION:
        raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of "
                         f"{', '.join(_MODELSPEC_PREDICTION)}")
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": modelspec_architecture(arch, prediction_type, adapter, denoiser_config),
        # what the keys were named after (Kohya's SD 1.x/2.x LoRAs: diffusers names; SDXL: Stability's)
        "modelspec.implementation": family(arch).modelspec_implementation,
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": datetime.fromtimestamp(int(timestamp), tz=timezone.utc).isoformat(),
    }
    if _MODELSPEC_PREDICTION[prediction_type]:
        metadata["modelspec.prediction_type"] = _MODELSPEC_PREDICTION[prediction_type]
    if clip_skip is not None:
        metadata["modelspec.encoder_layer"] = str(clip_skip)
    return metadata


def build_lora_metadata(info: LoraExportInfo, arch: str) -> dict[str, str]:
    """ss_* and modelspec.* metadata for a Kohya-format LoRA (the sshs_* hashes are added when saving)."""
    _check_arch(arch)
    finished_at = time.time() if info.training_finished_at is None else info.training_finished_at
    width, height = info.resolution
    network_module, network_args = _network_module_and_args(info)
    ss = {
        "ss_network_module": network_module,
        "ss_network_dim": info.rank,
        "ss_network_alpha": _alpha(info.alpha),
        "ss_base_model_version": family(arch).ss_base_model_version,
        "ss_v2": family(arch).kohya_v2,
        "ss_output_name": info.output_name,
        "ss_training_started_at": int(info.training_started_at),
        "ss_training_finished_at": int(finished_at),
        "ss_steps": info.steps,
        "ss_epoch": info.epoch,
        "ss_max_train_steps": info.max_train_steps,
        "ss_num_epochs": info.num_epochs,
        "ss_learning_rate": info.learning_rate,
        "ss_unet_lr": info.unet_lr,
        "ss_text_encoder_lr": info.text_encoder_lr,
        "ss_optimizer": info.optimizer,
        "ss_lr_scheduler": info.lr_scheduler,
        "ss_mixed_precision": info.mixed_precision,
        "ss_num_train_images": info.num_train_images,
        "ss_num_batches_per_epoch": info.num_batches_per_epoch,
        "ss_batch_size_per_device": info.batch_size,
        "ss_resolution": f"({width}, {height})",
        "ss_seed": info.seed,
        **loss_metadata(info.loss_settings),
        "ss_clip_skip": info.clip_skip,
        "ss_sd_model_name": info.base_model_name,
        "ss_new_sd_model_hash": info.base_model_hash,
        "ss_training_comment": info.comment,
        "ss_tag_frequency": json.dumps(info.tag_frequency),
        "ss_dataset_dirs": json.dumps({name: {"n_repeats": repeats, "img_count": images}
                                       for name, (repeats, images) in info.dataset_dirs.items()}),
    }
    if network_args is not None:
        ss["ss_network_args"] = json.dumps(network_args)
    # Kohya writes str(value) for every key (None -> "None", True -> "True"); readers expect exactly that.
    metadata = {key: str(value) for key, value in ss.items()}
    metadata.update(build_modelspec_metadata(
        arch=arch, adapter="lora", title=info.output_name, resolution=info.resolution,
        prediction_type=info.prediction_type, timestamp=finished_at, clip_skip=info.clip_skip,
        denoiser_config=info.denoiser_config))
    return metadata


def loss_metadata(settings: dict[str, Any]) -> dict[str, Any]:
    """The loss settings' metadata values (before str()), by LOSS_SETTING_KEYS, with FIXED_LOSS_METADATA."""
    values: dict[str, Any] = {}
    for entry in LOSS_SETTING_KEYS:
        schema = FIELDS_BY_NAME[entry.setting]
        value = settings.get(entry.setting, schema.default)
        if entry.none_when_off and value == schema.default:
            value = None
        elif schema.type == FLOAT:
            value = float(value)
        values[entry.key] = value
    return values | FIXED_LOSS_METADATA


def _network_module_and_args(info: LoraExportInfo) -> tuple[str, dict[str, str] | None]:
    """ss_network_module / ss_network_args as Kohya's networks.lora (plain LoRA, LoCon via conv_dim) or LyCORIS'
    lycoris.kohya writes them: the network_args strings as given on the command line."""
    conv = ({"conv_dim": str(info.conv_rank), "conv_alpha": str(_alpha(info.conv_alpha))}
            if info.conv_rank is not None else {})
    if info.network_type in ("lora", "locon") and not info.dora:
        return "networks.lora", conv or None
    args = {"algo": "locon" if info.network_type == "lora" and conv else info.network_type, **conv}
    if info.dora:
        # peft normalises each output channel; LyCORIS calls that wd_on_output (its readers check the scale's shape).
        args |= {"dora_wd": "True", "wd_on_output": "True"}
    if info.network_type == "lokr":
        args |= {"factor": str(info.lokr_factor), "decompose_both": str(bool(info.lokr_decompose_both))}
    return "lycoris.kohya", args


def _alpha(alpha: float | None) -> float | None:
    """Alpha as Kohya writes it: a float ("2.0"), since its network_alpha argument is a float."""
    return None if alpha is None else float(alpha)


def _check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHES)}")

"""Reading older job files. Each MigrationStep turns a dict of one format version into the next; a file is
passed through the steps from its version up to CURRENT_VERSION, and every step says what it changed.

Version 0 is a Kohya_ss-style file: flat top-level keys as Kohya's train_network.py arguments are spelled
(also grouped in Kohya's `[*_arguments]` tables). Migrations never read the live schema: version 0 maps onto
the version-1 key names, whatever later versions call them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError
from .schema import CURRENT_VERSION, SECTIONS
from .values import format_value

Converter = Callable[[Any], dict[str, Any]]  # Kohya value -> {kiln `section.key`: value}; {} = no equivalent


@dataclass(frozen=True)
class MigrationStep:
    from_version: int
    to_version: int
    apply: Callable[[dict[str, Any]], tuple[dict[str, Any], list[str]]]
    note: str


@dataclass(frozen=True)
class KohyaKey:
    kohya: str
    target: str  # the Kiln key(s) it becomes, for the docs table
    convert: Converter


def _to(target: str) -> Converter:
    return lambda value: {target: value}


def _to_choice(target: str, mapping: dict[str, str]) -> Converter:
    """Case-insensitive name mapping; unknown names have no equivalent."""
    return lambda value: ({target: mapping[str(value).lower()]} if str(value).lower() in mapping else {})


def _when_true(target: str, kiln_value: Any) -> Converter:
    return lambda value: {target: kiln_value} if value is True else {}


def _resolution(value: Any) -> dict[str, Any]:
    """Kohya "512,512" / "768,512" / 512 -> one side with the same area, a multiple of 8."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else [value]
    try:
        sides = [int(p) for p in parts]
    except (TypeError, ValueError):
        return {}
    side = sides[0] if len(sides) == 1 else round(math.sqrt(sides[0] * sides[1]) / 8) * 8
    return {"dataset.resolution": side}


def _max_train_epochs(value: Any) -> dict[str, Any]:
    # In Kohya max_train_epochs wins over max_train_steps; Kiln's max_steps = 0 means "use epochs".
    return {"training.epochs": value, "training.max_steps": 0}


def _network_args(value: Any) -> dict[str, Any]:
    """Kohya network_args ["conv_dim=4", "conv_alpha=1", "algo=lokr", ...] -> LoCon / LyCORIS settings."""
    pairs = dict(item.split("=", 1) for item in value if isinstance(item, str) and "=" in item) \
        if isinstance(value, list) else {}
    out: dict[str, Any] = {}
    try:
        if "conv_dim" in pairs:
            out |= {"lora.train_conv": True, "lora.conv_rank": int(pairs["conv_dim"].strip())}
        if "conv_alpha" in pairs:
            out["lora.conv_alpha"] = float(pairs["conv_alpha"].strip())
        # LyCORIS (network_module = lycoris.kohya): algo, dora_wd, and LoKr's factor / decompose_both
        algo = pairs.get("algo", "").strip().lower()
        if algo in ("lora", "locon", "loha", "lokr"):
            out["lora.type"] = algo
        if pairs.get("dora_wd", "").strip().lower() == "true":
            out["lora.dora"] = True
        if "factor" in pairs:
            out["lora.lokr_factor"] = int(pairs["factor"].strip())
        if "decompose_both" in pairs:
            out["lora.lokr_decompose_both"] = pairs["decompose_both"].strip().lower() == "true"
    except ValueError:
        return {}
    return out


def _save_model_as(value: Any) -> dict[str, Any]:
    return {"output.save_diffusers": True} if str(value).startswith("diffusers") else {}


_OPTIMIZERS = {"adamw8bit": "adamw8bit", "adamw": "adamw", "lion8bit": "lion8bit", "prodigy": "prodigy",
               "adafactor": "adafactor"}
_SCHEDULERS = {s: s for s in ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear",
                              "polynomial")}
_SAMPLERS = {"euler_a": "euler_a", "k_euler_a": "euler_a", "euler": "euler", "k_euler": "euler",
             "ddim": "ddim", "dpmsolver++": "dpmpp_2m", "k_dpm_2": "dpmpp_2m"}

# In application order: a later entry overrides an earlier one that sets the same Kiln key (as in Kohya,
# unet_lr beats learning_rate, optimizer_type beats use_8bit_adam, max_train_epochs beats max_train_steps).
KOHYA_KEYS: tuple[KohyaKey, ...] = (
    KohyaKey("pretrained_model_name_or_path", "model.base", _to("model.base")),
    KohyaKey("v2", "model.arch", _when_true("model.arch", "sd2")),
    KohyaKey("v_parameterization", "model.prediction_type", _when_true("model.prediction_type", "v_prediction")),
    KohyaKey("vae", "model.vae", _to("model.vae")),
    KohyaKey("train_data_dir", "dataset.dir", _to("dataset.dir")),
    KohyaKey("resolution", "dataset.resolution", _resolution),
    KohyaKey("caption_extension", "dataset.caption_extension", _to("dataset.caption_extension")),
    KohyaKey("enable_bucket", "dataset.enable_bucket", _to("dataset.enable_bucket")),
    KohyaKey("min_bucket_reso", "dataset.min_bucket_reso", _to("dataset.min_bucket_reso")),
    KohyaKey("max_bucket_reso", "dataset.max_bucket_reso", _to("dataset.max_bucket_reso")),
    KohyaKey("bucket_reso_steps", "dataset.bucket_reso_steps", _to("dataset.bucket_reso_steps")),
    KohyaKey("bucket_no_upscale", "dataset.bucket_no_upscale", _to("dataset.bucket_no_upscale")),
    KohyaKey("random_crop", "dataset.random_crop", _to("dataset.random_crop")),
    KohyaKey("flip_aug", "dataset.flip", _to("dataset.flip")),
    KohyaKey("shuffle_caption", "dataset.shuffle_caption", _to("dataset.shuffle_caption")),
    KohyaKey("keep_tokens", "dataset.keep_tokens", _to("dataset.keep_tokens")),
    KohyaKey("caption_dropout_rate", "dataset.caption_dropout_rate", _to("dataset.caption_dropout_rate")),
    KohyaKey("max_train_steps", "training.max_steps", _to("training.max_steps")),
    KohyaKey("max_train_epochs", "training.epochs", _max_train_epochs),
    KohyaKey("train_batch_size", "training.batch_size", _to("training.batch_size")),
    KohyaKey("gradient_accumulation_steps", "training.gradient_accumulation_steps",
             _to("training.gradient_accumulation_steps")),
    KohyaKey("learning_rate", "training.learning_rate", _to("training.learning_rate")),
    KohyaKey("unet_lr", "training.learning_rate", _to("training.learning_rate")),
    KohyaKey("text_encoder_lr", "training.text_encoder_lr", _to("training.text_encoder_lr")),
    KohyaKey("lr_scheduler", "training.lr_scheduler", _to_choice("training.lr_scheduler", _SCHEDULERS)),
    KohyaKey("lr_warmup_steps", "training.lr_warmup_steps", _to("training.lr_warmup_steps")),
    KohyaKey("lr_scheduler_num_cycles", "training.lr_num_cycles", _to("training.lr_num_cycles")),
    KohyaKey("lr_scheduler_power", "training.lr_power", _to("training.lr_power")),
    KohyaKey("use_8bit_adam", "training.optimizer", _when_true("training.optimizer", "adamw8bit")),
    KohyaKey("optimizer_type", "training.optimizer", _to_choice("training.optimizer", _OPTIMIZERS)),
    KohyaKey("max_grad_norm", "training.max_grad_norm", _to("training.max_grad_norm")),
    KohyaKey("mixed_precision", "training.mixed_precision", _to("training.mixed_precision")),
    KohyaKey("seed", "training.seed", _to("training.seed")),
    KohyaKey("gradient_checkpointing", "training.gradient_checkpointing", _to("training.gradient_checkpointing")),
    KohyaKey("cache_latents", "training.cache_latents", _to("training.cache_latents")),
    KohyaKey("cache_latents_to_disk", "training.cache_latents_to_disk", _to("training.cache_latents_to_disk")),
    KohyaKey("cache_text_encoder_outputs", "training.cache_text_encoder_outputs",
             _to("training.cache_text_encoder_outputs")),
    KohyaKey("noise_offset", "training.noise_offset", _to("training.noise_offset")),
    KohyaKey("min_snr_gamma", "training.min_snr_gamma", _to("training.min_snr_gamma")),
    KohyaKey("clip_skip", "training.clip_skip", _to("training.clip_skip")),
    KohyaKey("network_dim", "lora.rank", _to("lora.rank")),
    KohyaKey("network_alpha", "lora.alpha", _to("lora.alpha")),
    KohyaKey("network_dropout", "lora.dropout", _to("lora.dropout")),
    KohyaKey("network_train_unet_only", "lora.train_text_encoder",
             lambda value: {"lora.train_text_encoder": not value} if isinstance(value, bool) else {}),
    KohyaKey("network_args", "lora.train_conv, lora.conv_rank, lora.conv_alpha, lora.type (LyCORIS algo), lora.dora "
             "(dora_wd), lora.lokr_factor, lora.lokr_decompose_both", _network_args),
    KohyaKey("network_weights", "lora.init_weights", _to("lora.init_weights")),
    KohyaKey("prior_loss_weight", "dreambooth.prior_loss_weight", _to("dreambooth.prior_loss_weight")),
    KohyaKey("stop_text_encoder_training", "dreambooth.stop_text_encoder_step",
             _to("dreambooth.stop_text_encoder_step")),
    KohyaKey("token_string", "textual_inversion.token", _to("textual_inversion.token")),
    KohyaKey("init_word", "textual_inversion.init_word", _to("textual_inversion.init_word")),
    KohyaKey("num_vectors_per_token", "textual_inversion.vectors", _to("textual_inversion.vectors")),
    KohyaKey("use_object_template", "textual_inversion.template",
             _when_true("textual_inversion.template", "object")),
    KohyaKey("use_style_template", "textual_inversion.template", _when_true("textual_inversion.template", "style")),
    KohyaKey("output_dir", "output.dir", _to("output.dir")),
    KohyaKey("output_name", "output.name", _to("output.name")),
    KohyaKey("save_every_n_steps", "output.save_every_n_steps", _to("output.save_every_n_steps")),
    KohyaKey("save_precision", "output.save_precision",
             _to_choice("output.save_precision", {"float": "fp32", "fp16": "fp16", "bf16": "bf16"})),
    KohyaKey("save_model_as", "output.save_diffusers", _save_model_as),
    KohyaKey("sample_every_n_steps", "sample.every_n_steps", _to("sample.every_n_steps")),
    KohyaKey("sample_sampler", "sample.sampler", _to_choice("sample.sampler", _SAMPLERS)),
)
_KOHYA_BY_NAME = {k.kohya: k for k in KOHYA_KEYS}
IGNORED_HINTS = {
    "reg_data_dir": 'for class images use method = "dreambooth" and dreambooth.class_dir',
    "sample_prompts": "copy the prompt lines into sample.prompts",
    "dataset_config": "point dataset.dir at the image folder",
}


def _kohya_to_v1(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    flat: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key.endswith("_arguments"):  # Kohya's own grouped config tables
            flat.update(value)
        elif key in SECTIONS or key == "method":
            out[key] = value
        elif key != "version":
            flat[key] = value
    notes: list[str] = []
    mapped: dict[str, tuple[str, Any]] = {}  # kiln key -> (kohya key, value); later entries override
    overridden: set[str] = set()
    for entry in KOHYA_KEYS:
        if entry.kohya in flat:
            for target, value in entry.convert(flat[entry.kohya]).items():
                if target in mapped and mapped[target][0] != entry.kohya:
                    overridden.add(mapped[target][0])
                    notes.append(f"Kohya {entry.kohya} takes precedence over {mapped[target][0]}")
                mapped[target] = (entry.kohya, value)
    for target, (kohya, value) in mapped.items():
        section, key = target.split(".")
        table = out.setdefault(section, {})
        if not isinstance(table, dict) or key in table:
            notes.append(f"kept {target} from the file; ignored Kohya {kohya} = {format_value(flat[kohya])}")
            continue
        table[key] = value
        notes.append(f"Kohya {kohya} = {format_value(flat[kohya])} -> {target} = {format_value(value)}")
    used = {kohya for kohya, _ in mapped.values()} | overridden
    ignored = [k for k in flat if k not in used]
    if ignored:
        # A known key that was still ignored had a value Kiln cannot use: show the value.
        hints = [f"{k} ({IGNORED_HINTS[k]})" if k in IGNORED_HINTS
                 else f"{k} = {format_value(flat[k])}" if k in _KOHYA_BY_NAME else k for k in ignored]
        notes.append("ignored Kohya keys (no Kiln equivalent, or a value Kiln does not support): "
                     + ", ".join(hints))
    if "method" not in out and _infer_method(flat):
        out["method"] = _infer_method(flat)
        notes.append(f'method = "{out["method"]}" (inferred from the Kohya keys)')
    out["version"] = 1
    return out, notes


def _infer_method(flat: dict[str, Any]) -> str:
    if "token_string" in flat:
        return "textual_inversion"
    if any(k.startswith("network_") for k in flat):
        return "lora"
    return ""


MIGRATIONS: tuple[MigrationStep, ...] = (
    MigrationStep(0, 1, _kohya_to_v1, "Kohya-style flat keys become Kiln sections"),
)


def looks_like_kohya(data: dict[str, Any]) -> bool:
    """Whether a file without a version is a Kohya-style (version 0) file."""
    return any(k in _KOHYA_BY_NAME or (k.endswith("_arguments") and isinstance(v, dict))
               for k, v in data.items())


def file_version(data: dict[str, Any], where: str) -> int:
    """The format version a raw job dict is written in."""
    if "version" not in data:
        return 0 if looks_like_kohya(data) else CURRENT_VERSION
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError([f"{where}: version = {format_value(version)} is not valid "
                           f"(must be a whole number from 0 to {CURRENT_VERSION})"])
    if version > CURRENT_VERSION:
        raise ConfigError([f"{where}: version = {version} is newer than this Kiln understands (it reads up to "
                           f"version {CURRENT_VERSION}); update Kiln to run this job"])
    return version


def migrate(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """(data in the current format, notes on what changed). `where` names the file in errors."""
    version = file_version(data, where)
    notes: list[str] = []
    while version < CURRENT_VERSION:
        step = next(s for s in MIGRATIONS if s.from_version == version)
        data, step_notes = step.apply(data)
        notes += [f"version {step.from_version} -> {step.to_version}: {step.note}"] + step_notes
        version = step.to_version
    return data, notes

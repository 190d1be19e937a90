"""Kohya_ss configs -> Kiln's version-1 keys: sd-scripts TOML/argument files (train_network.py, train_db.py,
fine_tune.py argument names; fine_tune.py's become method = "finetune") and the Kohya GUI's saved .json configs (LoRA, DreamBooth, fine-tune and textual
inversion tabs), which use their own key names (`epoch`, `optimizer`, `max_resolution`, `LoRA_type`, ...) and
write numbers as strings ("0.0001") or whole numbers as floats (64.0).

Every source key leaves one MigrationNote: what it became, or why it was ignored. What Kiln cannot train
(iA3, GLoRA, a Flux/SD 3 DreamBooth, ...) is refused with the key and value named. Flux.1 / SD 3 / Chroma files
(flux_train_network.py, sd3_train_network.py, the GUI's Flux.1 and SD3 switches) import as LoRA jobs of those
families; what reads several of their keys together is kohya_flow.py. Like every migration this maps onto the
version-1 key names; the live schema is read only for its section names, which methods use a key, and whether
a key exists at all."""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable

from ..families import DEFAULT_FAMILY, FAMILIES, SD2, SDXL
from .errors import ConfigError
from .kohya_flow import (FLOW_IGNORED_HINTS, FLOW_IMPLIED_KEYS, FLOW_NETWORK_ARGS, apply_flow_family,
                         drop_inapplicable, flow_family, flow_refusals)
from .schema import SECTIONS, find_field
from .values import format_value


class MigrationNote(str):
    """One line about one source key (a str, so it prints and joins like the other notes), with the parts a
    program reads: `key`, `value` and `result` (the Kiln key = value it became, or why it was ignored)."""

    key: str
    value: Any
    result: str

    def __new__(cls, key: str, value: Any, result: str, text: str | None = None):
        # "became" results read `-> lora.rank = 8`; the others (ignored, refused parts, ...) read `: why`.
        became = re.match(r"[a-z0-9_]+\.[a-z0-9_]+ = ", result)
        text = text or f"Kohya {key} = {format_value(value)}{' -> ' if became else ': '}{result}"
        note = super().__new__(cls, text)
        note.key, note.value, note.result = key, value, result
        return note

    def __reduce__(self):  # pickles (jobs cross process boundaries) and deep-copies with its parts
        return MigrationNote, (self.key, self.value, self.result, str(self))

    def as_dict(self) -> dict[str, Any]:
        return {"source_key": self.key, "value": self.value, "result": self.result}


Converter = Callable[[Any], dict[str, Any]]  # coerced value -> {kiln `section.key`: value}; {} = no equivalent


@dataclass(frozen=True)
class KohyaKey:
    kohya: str
    target: str  # the Kiln key(s) it becomes, for the docs table
    convert: Converter
    type: str = "any"  # how the GUI's strings are coerced first: int, float, bool, str, any


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
        sides = [int(float(p)) for p in parts]
    except (TypeError, ValueError, OverflowError):  # "Infinity", "1e400" and words have no Kiln equivalent
        return {}
    if not all(0 < side <= 100_000 for side in sides):  # "-512,512" or absurd sizes: noted as unsupported
        return {}
    side = sides[0] if len(sides) == 1 else round(math.sqrt(sides[0] * sides[1]) / 8) * 8
    return {"dataset.resolution": side}


def _max_train_epochs(value: Any) -> dict[str, Any]:
    # In Kohya max_train_epochs wins over max_train_steps; Kiln's max_steps = 0 means "use epochs". 0 = unset.
    return {"training.epochs": value, "training.max_steps": 0} if value else {}


def _bucket_step(value: Any) -> dict[str, Any]:
    """Kohya takes any step (with a warning when it is not a multiple of 8; the GUI's fine-tune presets use 1);
    Kiln's bucket sides are multiples of 8, the VAE's factor: the nearest one, at least 8 (_implied notes it)."""
    return {"dataset.bucket_reso_steps": max(8, round(value / 8) * 8)} if value > 0 else {}


def _lr_warmup_percent(value: Any) -> dict[str, Any]:
    return {"training.lr_warmup_ratio": value / 100} if 0 <= value <= 100 else {}


def _kohya_args(value: Any) -> dict[str, str]:
    """["conv_dim=4", "algo=locon"] or the GUI's one string 'conv_dim=4 "algo=locon"' -> {name: text}."""
    items = value if isinstance(value, list) else re.findall(r'"[^"]*"|\S+', value) if isinstance(value, str) else []
    pairs = (str(item).strip('"').split("=", 1) for item in items if "=" in str(item))
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def _optimizer_args(value: Any) -> dict[str, Any]:
    """Only weight_decay has a Kiln key; the note shows the rest was dropped."""
    try:
        return {"training.weight_decay": float(_kohya_args(value)["weight_decay"])}
    except (KeyError, ValueError):
        return {}


def _save_model_as(value: Any) -> dict[str, Any]:
    text = str(value)
    if text.startswith("diffusers"):
        return {"output.save_diffusers": True}
    return {"output.save_diffusers": False} if text == "safetensors" else {}


def _sample_prompts(value: Any) -> dict[str, Any]:
    """The GUI's prompt box holds the prompt lines; sd-scripts names a prompts file (not read: copy it)."""
    if isinstance(value, list) and not all(isinstance(line, str) for line in value):
        return {}  # [1, 2] is not prompt text: noted as unsupported
    lines = value if isinstance(value, list) else str(value).splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if len(prompts) == 1 and prompts[0].lower().endswith((".txt", ".toml", ".json")) and " " not in prompts[0]:
        return {}
    return {"sample.prompts": prompts} if prompts else {}


def _unet_only(value: Any) -> dict[str, Any]:
    return {"lora.train_text_encoder": not value} if isinstance(value, bool) else {}


def _unless(target: str, default: Any) -> Converter:
    """Kohya's default (or off) value stays Kiln's default, without a note; any other value is mapped."""
    return lambda value: {} if value == default else {target: value}


def _log_with(value: Any) -> dict[str, Any]:
    """sd-scripts' log_with: tensorboard is what Kiln always does; wandb and all add Weights & Biases."""
    return {"logging.wandb": True} if str(value).lower() in ("wandb", "all") else {}


# Kohya's optimizer names, lower-cased, -> Kiln's (Kohya writes them with module paths too).
OPTIMIZERS = {"adamw8bit": "adamw8bit", "adamw": "adamw", "lion8bit": "lion8bit", "prodigy": "prodigy",
              "adafactor": "adafactor", "dadaptadam": "dadaptadam", "dadaptation": "dadaptadam",
              "dadaptlion": "dadaptlion", "came": "came", "came_pytorch.came": "came",
              "adamwschedulefree": "adamwschedulefree", "schedulefree.adamwschedulefree": "adamwschedulefree",
              "pagedadamw8bit": "pagedadamw8bit", "prodigyopt.prodigy": "prodigy",
              "lion": "lion8bit", "lion_pytorch.lion": "lion8bit",  # noted in _implied
              "bitsandbytes.optim.adamw8bit": "adamw8bit", "torch.optim.adamw": "adamw"}
_SCHEDULERS = {s: s for s in ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear",
                              "polynomial")}
_SAMPLERS = {"euler_a": "euler_a", "k_euler_a": "euler_a", "euler": "euler", "k_euler": "euler",
             "ddim": "ddim", "dpmsolver++": "dpmpp_2m", "k_dpm_2": "dpmpp_2m"}
_PRECISIONS = {"no": "no", "fp16": "fp16", "bf16": "bf16"}
_LOSSES = {s: s for s in ("l2", "l1", "huber", "smooth_l1")}
_HUBER_SCHEDULES = {s: s for s in ("constant", "exponential", "snr")}

# In application order: a later entry overrides an earlier one that sets the same Kiln key (as in Kohya,
# unet_lr beats learning_rate, optimizer_type beats use_8bit_adam, max_train_epochs beats max_train_steps).
# The GUI's own names sit beside the sd-scripts names they stand for.
KOHYA_KEYS: tuple[KohyaKey, ...] = (
    KohyaKey("pretrained_model_name_or_path", "model.base", _to("model.base"), "str"),
    KohyaKey("v2", "model.arch", _when_true("model.arch", SD2.id), "bool"),
    KohyaKey("sdxl", "model.arch", _when_true("model.arch", SDXL.id), "bool"),
    KohyaKey("sdxl_checkbox", "model.arch", _when_true("model.arch", SDXL.id), "bool"),  # GUI fine-tune tab
    KohyaKey("v_parameterization", "model.prediction_type", _when_true("model.prediction_type", "v_prediction"),
             "bool"),
    KohyaKey("vae", "model.vae", _to("model.vae"), "str"),
    # SD 3 / Flux.1 / Chroma: the model files sd-scripts takes apart from the checkpoint
    KohyaKey("clip_l", "model.clip_l", _unless("model.clip_l", ""), "str"),
    KohyaKey("clip_g", "model.clip_g", _unless("model.clip_g", ""), "str"),
    KohyaKey("t5xxl", "model.t5xxl", _unless("model.t5xxl", ""), "str"),
    KohyaKey("ae", "model.vae", _unless("model.vae", ""), "str"),  # Flux's autoencoder file
    KohyaKey("train_data_dir", "dataset.dir", _to("dataset.dir"), "str"),
    KohyaKey("image_folder", "dataset.dir", _to("dataset.dir"), "str"),  # GUI fine-tune tab
    KohyaKey("max_resolution", "dataset.resolution", _resolution),
    KohyaKey("resolution", "dataset.resolution", _resolution),
    KohyaKey("caption_extension", "dataset.caption_extension", _to("dataset.caption_extension"), "str"),
    KohyaKey("dataset_repeats", "dataset.repeats", _to("dataset.repeats"), "int"),
    KohyaKey("enable_bucket", "dataset.enable_bucket", _to("dataset.enable_bucket"), "bool"),
    KohyaKey("min_bucket_reso", "dataset.min_bucket_reso", _to("dataset.min_bucket_reso"), "int"),
    KohyaKey("max_bucket_reso", "dataset.max_bucket_reso", _to("dataset.max_bucket_reso"), "int"),
    KohyaKey("bucket_reso_steps", "dataset.bucket_reso_steps", _bucket_step, "int"),
    KohyaKey("bucket_no_upscale", "dataset.bucket_no_upscale", _to("dataset.bucket_no_upscale"), "bool"),
    KohyaKey("random_crop", "dataset.random_crop", _to("dataset.random_crop"), "bool"),
    KohyaKey("flip_aug", "dataset.flip", _to("dataset.flip"), "bool"),
    KohyaKey("shuffle_caption", "dataset.shuffle_caption", _to("dataset.shuffle_caption"), "bool"),
    KohyaKey("keep_tokens", "dataset.keep_tokens", _to("dataset.keep_tokens"), "int"),
    KohyaKey("caption_dropout_rate", "dataset.caption_dropout_rate", _to("dataset.caption_dropout_rate"), "float"),
    KohyaKey("caption_tag_dropout_rate", "dataset.caption_tag_dropout_rate",
             _unless("dataset.caption_tag_dropout_rate", 0.0), "float"),
    KohyaKey("keep_tokens_separator", "dataset.keep_tokens_separator", _unless("dataset.keep_tokens_separator", ""),
             "str"),
    KohyaKey("enable_wildcard", "dataset.wildcards", _when_true("dataset.wildcards", True), "bool"),
    KohyaKey("masked_loss", "dataset.masked_training", _when_true("dataset.masked_training", True), "bool"),
    KohyaKey("alpha_mask", "dataset.masked_training", _when_true("dataset.masked_training", True), "bool"),
    KohyaKey("epoch", "training.epochs", lambda v: {"training.epochs": v} if v else {}, "int"),
    KohyaKey("max_train_steps", "training.max_steps", _to("training.max_steps"), "int"),
    KohyaKey("max_train_epochs", "training.epochs", _max_train_epochs, "int"),
    KohyaKey("train_batch_size", "training.batch_size", _to("training.batch_size"), "int"),
    KohyaKey("gradient_accumulation_steps", "training.gradient_accumulation_steps",
             _to("training.gradient_accumulation_steps"), "int"),
    KohyaKey("learning_rate", "training.learning_rate", _to("training.learning_rate"), "float"),
    KohyaKey("unet_lr", "training.learning_rate", lambda v: {"training.learning_rate": v} if v else {}, "float"),
    KohyaKey("text_encoder_lr", "training.text_encoder_lr", _to("training.text_encoder_lr"), "float"),
    KohyaKey("learning_rate_te", "training.text_encoder_lr", _to("training.text_encoder_lr"), "float"),
    # sdxl_train.py: one LR per text encoder; Kiln has one for both (learning_rate_te2 is noted in _implied)
    KohyaKey("learning_rate_te1", "training.text_encoder_lr", _to("training.text_encoder_lr"), "float"),
    KohyaKey("lr_scheduler", "training.lr_scheduler", _to_choice("training.lr_scheduler", _SCHEDULERS), "str"),
    KohyaKey("lr_warmup", "training.lr_warmup_ratio", _lr_warmup_percent, "float"),
    KohyaKey("lr_warmup_steps", "training.lr_warmup_steps", _to("training.lr_warmup_steps"), "int"),
    KohyaKey("lr_scheduler_num_cycles", "training.lr_num_cycles",
             lambda v: {"training.lr_num_cycles": v} if v else {}, "int"),
    KohyaKey("lr_scheduler_power", "training.lr_power", lambda v: {"training.lr_power": v} if v else {}, "float"),
    KohyaKey("use_8bit_adam", "training.optimizer", _when_true("training.optimizer", "adamw8bit"), "bool"),
    KohyaKey("optimizer", "training.optimizer", _to_choice("training.optimizer", OPTIMIZERS), "str"),
    KohyaKey("optimizer_type", "training.optimizer", _to_choice("training.optimizer", OPTIMIZERS), "str"),
    KohyaKey("optimizer_args", "training.weight_decay", _optimizer_args),
    KohyaKey("max_grad_norm", "training.max_grad_norm", _to("training.max_grad_norm"), "float"),
    KohyaKey("mixed_precision", "training.mixed_precision", _to_choice("training.mixed_precision", _PRECISIONS),
             "str"),
    KohyaKey("seed", "training.seed", _to("training.seed"), "int"),
    KohyaKey("gradient_checkpointing", "training.gradient_checkpointing", _to("training.gradient_checkpointing"),
             "bool"),
    KohyaKey("fp8_base", "training.base_quantization", _when_true("training.base_quantization", "fp8"), "bool"),
    # fp8 for the denoiser only (the text encoders stay as they are): what Kiln's base_quantization = "fp8" is;
    # fp8_base also keeps T5-XXL in fp8 for Flux / SD 3 (kohya_flow.py: training.t5_quantization)
    KohyaKey("fp8_base_unet", "training.base_quantization", _when_true("training.base_quantization", "fp8"),
             "bool"),
    KohyaKey("blocks_to_swap", "training.blocks_to_swap", _unless("training.blocks_to_swap", 0), "int"),
    # flow models (read together in kohya_flow.py, which drops what the family's script does not use)
    *(KohyaKey(name, f"training.{name}", _to(f"training.{name}"), "float")  # the same names in Kiln
      for name in ("guidance_scale", "discrete_flow_shift", "sigmoid_scale", "logit_mean", "logit_std", "mode_scale")),
    KohyaKey("cache_latents", "training.cache_latents", _to("training.cache_latents"), "bool"),
    KohyaKey("cache_latents_to_disk", "training.cache_latents_to_disk", _to("training.cache_latents_to_disk"),
             "bool"),
    KohyaKey("cache_text_encoder_outputs", "training.cache_text_encoder_outputs",
             _to("training.cache_text_encoder_outputs"), "bool"),
    KohyaKey("sdxl_cache_text_encoder_outputs", "training.cache_text_encoder_outputs",
             _to("training.cache_text_encoder_outputs"), "bool"),
    KohyaKey("flux1_cache_text_encoder_outputs", "training.cache_text_encoder_outputs",
             _to("training.cache_text_encoder_outputs"), "bool"),
    KohyaKey("sd3_cache_text_encoder_outputs", "training.cache_text_encoder_outputs",
             _to("training.cache_text_encoder_outputs"), "bool"),
    KohyaKey("noise_offset", "training.noise_offset", _to("training.noise_offset"), "float"),
    KohyaKey("min_snr_gamma", "training.min_snr_gamma", _to("training.min_snr_gamma"), "float"),
    KohyaKey("loss_type", "training.loss", lambda v: {} if str(v).lower() == "l2" else
             _to_choice("training.loss", _LOSSES)(v), "str"),
    KohyaKey("huber_c", "training.huber_c", _unless("training.huber_c", 0.1), "float"),
    KohyaKey("huber_schedule", "training.huber_schedule", lambda v: {} if str(v).lower() == "snr" else
             _to_choice("training.huber_schedule", _HUBER_SCHEDULES)(v), "str"),
    KohyaKey("min_timestep", "training.min_timestep", _unless("training.min_timestep", 0), "int"),
    # The GUI writes 0 for "unset" (it then passes no --max_timestep): Kiln's default 1000 stands.
    KohyaKey("max_timestep", "training.max_timestep",
             lambda v: {} if v in (0, 1000) else {"training.max_timestep": v}, "int"),
    KohyaKey("ip_noise_gamma", "training.ip_noise_gamma", _unless("training.ip_noise_gamma", 0.0), "float"),
    KohyaKey("debiased_estimation_loss", "training.debiased_estimation",
             _when_true("training.debiased_estimation", True), "bool"),
    KohyaKey("zero_terminal_snr", "training.zero_terminal_snr", _when_true("training.zero_terminal_snr", True),
             "bool"),
    KohyaKey("clip_skip", "training.clip_skip", lambda v: {"training.clip_skip": v} if v else {}, "int"),
    KohyaKey("num_processes", "training.num_processes", lambda v: {"training.num_processes": v} if v else {},
             "int"),
    KohyaKey("network_dim", "lora.rank", _to("lora.rank"), "int"),
    KohyaKey("network_alpha", "lora.alpha", _to("lora.alpha"), "float"),
    KohyaKey("network_dropout", "lora.dropout", _to("lora.dropout"), "float"),
    KohyaKey("network_train_unet_only", "lora.train_text_encoder", _unet_only, "bool"),
    KohyaKey("network_weights", "lora.init_weights", _to("lora.init_weights"), "str"),
    KohyaKey("lora_network_weights", "lora.init_weights", _to("lora.init_weights"), "str"),  # the GUI's name
    KohyaKey("prior_loss_weight", "dreambooth.prior_loss_weight", _to("dreambooth.prior_loss_weight"), "float"),
    KohyaKey("token_string", "textual_inversion.token", _to("textual_inversion.token"), "str"),
    KohyaKey("init_word", "textual_inversion.init_word", _to("textual_inversion.init_word"), "str"),
    KohyaKey("num_vectors_per_token", "textual_inversion.vectors", _to("textual_inversion.vectors"), "int"),
    KohyaKey("use_object_template", "textual_inversion.template",
             _when_true("textual_inversion.template", "object"), "bool"),
    KohyaKey("use_style_template", "textual_inversion.template", _when_true("textual_inversion.template", "style"),
             "bool"),
    KohyaKey("template", "textual_inversion.template",  # GUI TI tab: "object template" / "style template" / caption
             lambda v: {"textual_inversion.template": {"object template": "object", "style template": "style",
                                                       "caption": "captions"}[v.lower()]}
             if str(v).lower() in ("object template", "style template", "caption") else {}, "str"),
    KohyaKey("output_dir", "output.dir", _to("output.dir"), "str"),
    KohyaKey("output_name", "output.name", _to("output.name"), "str"),
    KohyaKey("save_every_n_steps", "output.save_every_n_steps", _to("output.save_every_n_steps"), "int"),
    KohyaKey("save_every_n_epochs", "output.save_every_n_epochs", _unless("output.save_every_n_epochs", 0), "int"),
    KohyaKey("save_precision", "output.save_precision",
             _to_choice("output.save_precision", {"float": "fp32", "fp16": "fp16", "bf16": "bf16"}), "str"),
    KohyaKey("save_model_as", "output.save_diffusers", _save_model_as, "str"),
    KohyaKey("sample_prompts", "sample.prompts", _sample_prompts),
    KohyaKey("sample_every_n_steps", "sample.every_n_steps", _to("sample.every_n_steps"), "int"),
    KohyaKey("sample_every_n_epochs", "sample.every_n_epochs", _unless("sample.every_n_epochs", 0), "int"),
    KohyaKey("sample_at_first", "sample.at_first_step", _when_true("sample.at_first_step", True), "bool"),
    KohyaKey("sample_sampler", "sample.sampler", _to_choice("sample.sampler", _SAMPLERS), "str"),
    KohyaKey("use_wandb", "logging.wandb", _when_true("logging.wandb", True), "bool"),
    KohyaKey("log_with", "logging.wandb", _log_with, "str"),
    KohyaKey("wandb_run_name", "logging.wandb_run_name", _unless("logging.wandb_run_name", ""), "str"),
    # sd-scripts names the tracker's project after log_tracker_name (else "network_train" etc.)
    KohyaKey("log_tracker_name", "logging.wandb_project", _unless("logging.wandb_project", ""), "str"),
)
KOHYA_BY_NAME = {k.kohya: k for k in KOHYA_KEYS}

# Keys read together with others (the network type and its options, multires noise, kept saves, regularisation
# images), in _implied rather than one by one: Kohya key -> the Kiln keys it can become (for the docs table).
IMPLIED_KEYS: tuple[tuple[str, str], ...] = (
    ("LoRA_type", "lora.type, lora.train_conv"),
    ("network_module", "lora.type, lora.train_conv (lycoris.kohya)"),
    ("network_args", "lora.type (algo), lora.train_conv, lora.conv_rank (conv_dim), lora.conv_alpha, lora.dora "
                     "(dora_wd), lora.lokr_factor (factor), lora.lokr_decompose_both (decompose_both)"),
    ("conv_dim", "lora.conv_rank"), ("conv_alpha", "lora.conv_alpha"), ("dora_wd", "lora.dora"),
    ("factor", "lora.lokr_factor"), ("decompose_both", "lora.lokr_decompose_both"),
    ("dim_from_weights", "lora.rank, lora.alpha left to be read from lora.init_weights"),
    ("noise_offset_type", "which of training.noise_offset / training.multires_noise_* applies"),
    ("multires_noise_iterations", "training.multires_noise_iterations"),
    ("multires_noise_discount", "training.multires_noise_discount"),
    ("save_last_n_epochs", "output.keep_last_n_saves"), ("save_last_n_steps", "output.keep_last_n_saves"),
    ("reg_data_dir", "dataset.reg_dir (LoRA), dreambooth.class_dir (DreamBooth)"),
) + FLOW_IMPLIED_KEYS
_IMPLIED_NAMES = frozenset(k for k, _ in IMPLIED_KEYS)
# Values that mean "Kohya's default behaviour", which is Kiln's too: no note for them.
_KOHYA_DEFAULTS = {"loss_type": "l2", "huber_schedule": "snr", "huber_c": 0.1, "min_timestep": 0,
                   "max_timestep": 1000, "noise_offset_type": "Original", "LyCORIS_preset": "full", "factor": -1,
                   "multires_noise_discount": 0.3, "log_with": "tensorboard", "preset": "full"}
# LoRA_type (GUI) values Kiln can train: (lora.type, LyCORIS module?); any other type is refused. The GUI runs
# Standard and Kohya LoCon with sd-scripts' networks.lora, the others with LyCORIS' lycoris.kohya.
_LORA_TYPES = {"standard": ("lora", False), "kohya locon": ("lora", False), "flux1": ("lora", False), "locon": ("lora", True),
               "lycoris/locon": ("lora", True), "lycoris/loha": ("loha", True), "lycoris/lokr": ("lokr", True)}
# LyCORIS algo (network_args algo=) -> lora.type; LoCon is LoRA with conv layers, which Kiln's train_conv adds.
_LYCORIS_ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}
# network_args values that mean off
_OFF_TEXTS = ("", "0", "0.0", "false", "none")
# LyCORIS presets without conv layers (enable_conv false); "full", the default, adapts them.
_PRESETS_WITHOUT_CONV = ("full-lin", "attn-mlp", "attn-only", "unet-transformer-only")
_REFUSED_ALGOS = {"ia3": "iA3", "glora": "GLoRA", "dylora": "DyLoRA", "diag-oft": "OFT", "boft": "BOFT",
                  "full": "native fine-tuning"}
_REFUSED_MODULES = {"dylora": "DyLoRA", "lora_fa": "LoRA-FA", "oft": "OFT", "oft_flux": "OFT"}
IGNORED_HINTS = {
    "dataset_config": "point dataset.dir at the image folder",
    "xformers": "Kiln uses PyTorch's scaled-dot-product attention",
    "mem_eff_attn": "Kiln uses PyTorch's scaled-dot-product attention",
    "sdxl_no_half_vae": "Kiln keeps the VAE in fp32 under fp16",
    "logging_dir": "TensorBoard logs go to the job folder",
    "network_module": "Kiln picks its own LoRA modules",
    "use_tucker": "Kiln's LoHa/LoKr conv layers use no Tucker/CP decomposition",
    "use_cp": "Kiln's LoHa/LoKr conv layers use no Tucker/CP decomposition",
    "wandb_api_key": "log in once with `wandb login`; the key is not copied",
    "huggingface_token": "Kiln does not upload; the token is not copied",
    "lr_scheduler_type": "a torch scheduler by class name; Kiln schedules by training.lr_scheduler (from lr_scheduler)",
    "lr_scheduler_args": "arguments of lr_scheduler_type, which Kiln does not use",
    # sd-scripts fine_tune.py / the GUI's Fine-tune tab read captions and buckets from a metadata file made
    # beforehand; Kiln reads each image's caption file and buckets the images itself.
    "in_json": "Kiln reads the caption files beside the images in dataset.dir (dataset.caption_extension)",
    "train_dir": "the GUI's folder for its metadata files; Kiln needs none",
    **{key: "the GUI prepares a metadata file; Kiln reads captions and buckets images itself"
       for key in ("create_caption", "create_buckets", "generate_caption_database", "generate_image_buckets",
                   "caption_metadata_filename", "latent_metadata_filename", "use_latent_files", "full_path")},
    **FLOW_IGNORED_HINTS,
}
# Switches that set one Kiln key the same way: the second one notes it agrees, rather than "takes precedence".
_SAME_SWITCH = frozenset({"masked_loss", "alpha_mask", "use_wandb", "log_with"})
# Values never repeated in a note (they are written into converted job files as comments).
_SECRET_KEYS = frozenset({"wandb_api_key", "huggingface_token"})
# Why a known key's value could not be used, where there is more to say than "not supported".
_UNMAPPED_VALUE_HINTS = {"sample_prompts": "it names a prompts file; copy its lines into sample.prompts",
                         "optimizer_args": "only weight_decay has a Kiln key",
                         "lr_scheduler": "Kiln's schedules are " + ", ".join(_SCHEDULERS)}
# Keys only the GUI writes: their presence means a GUI config, whose numbers may be strings.
GUI_ONLY_KEYS = frozenset({"LoRA_type", "epoch", "max_resolution", "lr_warmup", "optimizer", "sdxl", "conv_dim",
                           "conv_alpha", "learning_rate_te", "image_folder", "dataset_repeats", "template",
                           "flux1_checkbox", "sd3_checkbox", "model_list", "additional_parameters",
                           "sdxl_checkbox", "train_dir", "use_latent_files", "create_caption", "create_buckets"})
# Keys of sd-scripts fine_tune.py and the GUI's Fine-tune tab that train_db.py / the DreamBooth tab do not have.
FINETUNE_KEYS = frozenset({"in_json", "train_text_encoder", "dataset_repeats", "image_folder", "train_dir",
                           "use_latent_files", "create_caption", "create_buckets", "generate_caption_database",
                           "generate_image_buckets", "caption_metadata_filename", "latent_metadata_filename"})


def looks_like_kohya(data: dict[str, Any]) -> bool:
    """Whether a file without a version is a Kohya-style (version 0) file: Kohya keys and no Kiln table."""
    if any(isinstance(data.get(section), dict) for section in SECTIONS[1:]):
        return False
    return any(((k in KOHYA_BY_NAME or k in GUI_ONLY_KEYS or k in _IMPLIED_NAMES) and not isinstance(v, dict))
               or (k.endswith("_arguments") and isinstance(v, dict)) for k, v in data.items())


def coerce(value: Any, kind: str) -> tuple[Any, bool]:
    """(value as `kind`, ok). The GUI writes "0.0001", "64", 64.0, "True"; "" and None mean unset (ok=False,
    value None); a value that cannot be read as `kind` is returned unchanged with ok=False."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, False
    if kind == "bool":
        if isinstance(value, bool):
            return value, True
        text = str(value).strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            return value, False
        return text in ("true", "1", "yes"), True
    if kind in ("int", "float"):
        if isinstance(value, bool):
            return value, False
        if kind == "int" and isinstance(value, int):
            return value, True  # any size: the schema's range check names it (as a float it would overflow)
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return value, False
        if not math.isfinite(number):  # Infinity, NaN, "1e400"
            return value, False
        if kind == "int":
            if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                return int(value), True  # exact, however many digits
            return (int(number), True) if number.is_integer() else (value, False)
        return number, True
    if kind == "str":
        return (value, True) if isinstance(value, str) else (value, False)
    return value, True


def _additional_parameters(value: Any) -> dict[str, Any]:
    """The GUI's free-text box of extra sd-scripts arguments ('--network_train_unet_only --max_grad_norm=0
    --lr_scheduler_args "T_max=30"'), as {argument name: value}: True for a bare switch, the text for one
    value, a list for several. The GUI puts them last on the command line, so they win over its own keys."""
    try:
        tokens = shlex.split(value) if isinstance(value, str) else []
    except ValueError:  # unbalanced quotes: read nothing rather than half
        return {}
    parsed: dict[str, Any] = {}
    name = None
    for token in tokens:
        if token.startswith("--"):
            name, _, text = token[2:].partition("=")
            parsed[name] = text if text else True
        elif name is not None:
            earlier = parsed[name]
            parsed[name] = token if earlier is True else (earlier if isinstance(earlier, list) else [earlier]) + [token]
    return parsed


def _flatten(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Kohya keys, keys already in Kiln's shape). Kohya's `[*_arguments]` tables are flattened."""
    flat: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key.endswith("_arguments"):
            flat.update(value)
        elif key in SECTIONS or key == "method":
            out[key] = value
        elif key != "version":
            flat[key] = value
    return flat, out


def _refusals(flat: dict[str, Any]) -> list[str]:
    """What Kiln cannot train at all, each naming the key and value."""
    problems = []
    lora_type = flat.get("LoRA_type")
    if isinstance(lora_type, str) and lora_type.lower() not in _LORA_TYPES:
        problems.append(f"Kohya LoRA_type = {format_value(lora_type)}: Kiln cannot train this network type (it "
                        "trains Standard, LoCon, LoHa and LoKr networks)")
    module = str(flat.get("network_module") or "")
    algo = _kohya_args(flat.get("network_args")).get("algo", "").lower()
    for name, what in _REFUSED_MODULES.items():
        if module.rsplit(".", 1)[-1] == name:
            problems.append(f"Kohya network_module = {format_value(module)}: Kiln cannot train {what} networks")
    if algo in _REFUSED_ALGOS:
        problems.append(f"Kohya network_args algo = {format_value(algo)}: Kiln cannot train "
                        f"{_REFUSED_ALGOS[algo]} networks")
    # DoRA on LoHa/LoKr: LyCORIS has it, Kiln's (peft's) LoHa/LoKr layers do not.
    gui_kind = _LORA_TYPES.get(str(lora_type).lower(), ("", False))[0] if isinstance(lora_type, str) else ""
    if gui_kind in ("loha", "lokr") and coerce(flat.get("dora_wd"), "bool") == (True, True):
        problems.append(f"Kohya dora_wd = {format_value(flat['dora_wd'])} with LoRA_type = "
                        f"{format_value(lora_type)}: Kiln trains DoRA with LoRA and LoCon only")
    args = _kohya_args(flat.get("network_args"))
    if (_is_lycoris(module) and args.get("algo", "").lower() in ("loha", "lokr")
            and coerce(args.get("dora_wd"), "bool") == (True, True)):
        problems.append(f"Kohya network_args dora_wd = {format_value(args['dora_wd'])} with algo = "
                        f"{format_value(args['algo'])}: Kiln trains DoRA with LoRA and LoCon only")
    return problems


def infer_method(flat: dict[str, Any]) -> str:
    if "token_string" in flat:
        return "textual_inversion"
    if "LoRA_type" in flat or any(k.startswith("network_") for k in flat):
        return "lora"
    if flat.keys() & FINETUNE_KEYS:
        return "finetune"
    dreambooth_keys = ("learning_rate_te", "no_token_padding", "reg_data_dir", "prior_loss_weight",
                       "stop_text_encoder_training")
    return "dreambooth" if any(k in flat for k in dreambooth_keys) else ""


def kohya_to_v1(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """A Kohya config as a version-1 Kiln dict, with one note per source key. Raises ConfigError naming each
    key whose value Kiln cannot train."""
    flat, out = _flatten(data)
    notes: list[str] = []
    extra_args = _additional_parameters(flat.get("additional_parameters"))
    if extra_args:
        notes.append(MigrationNote("additional_parameters", flat["additional_parameters"],
                                   "read as sd-scripts arguments, each noted by its name: " + ", ".join(extra_args)))
        flat.update(extra_args)
    network_args = _kohya_args(flat.get("network_args"))
    found = flow_family(flat, network_args)  # (family id, the key that says so) of a Flux/SD3/Chroma file
    method = out.get("method") or infer_method(flat)
    problems = [f"{where}: {p}" for p in _refusals(flat) + flow_refusals(flat, network_args, found, method)]
    if problems:
        raise ConfigError(problems)
    mapped: Mapped = {}  # later entries override
    handled: set[str] = {"additional_parameters"} if extra_args else set()
    extra: Extra = {}
    for entry in KOHYA_KEYS:
        if entry.kohya not in flat:
            continue
        value, ok = coerce(flat[entry.kohya], entry.type)
        if value is None:
            handled.add(entry.kohya)  # unset in the file ("" or null): Kiln's default stands
            continue
        converted = entry.convert(value) if ok else {}
        if not converted:
            continue
        handled.add(entry.kohya)
        for target, kiln_value in converted.items():
            earlier = mapped.get(target)
            if earlier and earlier[0] != entry.kohya and {earlier[0], entry.kohya} <= _SAME_SWITCH \
                    and earlier[1] == kiln_value:  # two switches for one thing (masked_loss, alpha_mask)
                extra.setdefault(entry.kohya, []).append(f"{target} = {format_value(kiln_value)} (as Kohya "
                                                         f"{earlier[0]})")
                continue
            if earlier and earlier[0] != entry.kohya:
                notes.append(MigrationNote(earlier[0], flat[earlier[0]],
                                           f"replaced by Kohya {entry.kohya} (it takes precedence)",
                                           f"Kohya {entry.kohya} takes precedence over {earlier[0]}"))
            mapped[target] = (entry.kohya, kiln_value)
    _implied(flat, method, mapped, notes, handled, extra)
    apply_flow_family(flat, network_args, found, mapped, handled, extra, notes)
    drop_inapplicable(_family_id(mapped, out), mapped, extra)
    parts: dict[str, list[tuple[str, str | None]]] = {}  # kohya key -> (result, own text) for its one note
    for target, (kohya, value) in mapped.items():
        section, key = target.split(".")
        table = out.setdefault(section, {})
        if find_field(target) is None:  # a Kiln key this branch does not have (yet): noted, not an error
            part = (f"ignored: {target} is not a key of this Kiln", None)
        elif not _used_by(target, method):
            part = (f"ignored: {target} is not used by method {format_value(method)}", None)
        elif not isinstance(table, dict) or key in table:
            part = (f"ignored: the file sets {target} itself", f"kept {target} from the file; ignored Kohya "
                                                               f"{kohya} = {format_value(flat.get(kohya))}")
        else:
            table[key] = value
            part = (f"{target} = {format_value(value)}", None)
        parts.setdefault(kohya, []).append(part)
    training = out.setdefault("training", {})
    if isinstance(training, dict) and "optimizer" not in training and method:
        training["optimizer"] = "adamw"
        notes.append('training.optimizer = "adamw": sd-scripts\' optimizer when the file names none (Kiln\'s own '
                     'default is adamw8bit)')
    for kohya, more in extra.items():
        parts.setdefault(kohya, []).extend((text, None) for text in more)
    notes += [_one_note(kohya, flat.get(kohya), found) for kohya, found in parts.items()]
    notes += _ignored_notes(flat, handled | parts.keys())
    if "method" not in out and method:
        out["method"] = method
        notes.append(f'method = "{method}" (inferred from the Kohya keys)')
    out["version"] = 1
    return out, notes


def _family_id(mapped: Mapped, out: dict[str, Any]) -> str:
    """The job's family as far as the file says; an SD file without v2/sdxl reads as SD 1.x (all SD families
    refuse the flow-only options alike)."""
    arch = mapped.get("model.arch", (None, None))[1]
    model = out.get("model")
    if arch is None and isinstance(model, dict):
        arch = model.get("arch")
    return arch if arch in FAMILIES else DEFAULT_FAMILY.id


def _one_note(key: str, value: Any, parts: list[tuple[str, str | None]]) -> MigrationNote:
    """One key's note from what each of its parts became: the Kiln keys set first, then what was ignored."""
    if len(parts) == 1:
        return MigrationNote(key, value, *parts[0])
    became = [result for result, _ in parts if re.match(r"[a-z0-9_]+\.[a-z0-9_]+ = ", result)]
    rest = [result for result, _ in parts if result not in became]
    return MigrationNote(key, value, "; ".join(filter(None, [", ".join(became)] + rest)))


def _used_by(target: str, method: str) -> bool:
    field = find_field(target)
    return field is None or not method or method in field.methods


Mapped = dict[str, tuple[str, Any]]  # kiln key -> (kohya key, value)
Extra = dict[str, list[str]]  # kohya key -> more about it for its note: what was ignored and why


def _is_lycoris(module: str) -> bool:
    return module.strip().lower() == "lycoris.kohya"


def _network_shape(flat: dict[str, Any], mapped: Mapped, notes: list[str], handled: set[str], extra: Extra) -> None:
    """The network type and its options: the GUI's LoRA_type with its own keys (conv_dim, factor, dora_wd, ...),
    or sd-scripts' network_module with network_args (LyCORIS' algo=, conv_dim=, factor=, ...). LyCORIS adapts
    the conv layers unless its preset leaves them out (conv_dim 0 means network_dim, as Kiln's conv_rank 0
    means rank); Kohya's networks.lora only with a conv_dim."""
    args = _kohya_args(flat.get("network_args"))
    module = str(flat.get("network_module") or "")
    gui_type = str(flat.get("LoRA_type", "")).lower()
    if gui_type in _LORA_TYPES:
        kind, lycoris = _LORA_TYPES[gui_type]
        source, settings = "LoRA_type", {k: flat[k] for k in ("conv_dim", "conv_alpha", "dora_wd", "factor",
                                                               "decompose_both") if k in flat}
        preset = str(flat.get("LyCORIS_preset") or "full").lower()
        owner = {k: k for k in settings}
    elif _is_lycoris(module):
        algo = args.get("algo", "lora").lower()
        if algo not in _LYCORIS_ALGOS:  # the ones Kiln cannot train were refused already
            return
        kind, lycoris = _LYCORIS_ALGOS[algo], True
        source = "network_args" if "network_args" in flat else "network_module"
        settings = {k: args[k] for k in ("conv_dim", "conv_alpha", "dora_wd", "factor", "decompose_both")
                    if k in args}
        preset = args.get("preset", "full").lower()
        owner = {k: "network_args" for k in settings}
        if source == "network_args":
            handled.add("network_module")
            notes.append(MigrationNote("network_module", flat["network_module"],
                                       f"a LyCORIS network, set up from network_args (algo = {algo})"))
    elif args:  # sd-scripts' networks.lora: LoCon through conv_dim / conv_alpha
        kind, lycoris, source, preset = "lora", False, "network_args", "full"
        settings = {k: args[k] for k in ("conv_dim", "conv_alpha", "dora_wd", "factor", "decompose_both")
                    if k in args}
        owner = {k: "network_args" for k in settings}
    else:
        return
    handled.add(source)
    handled.update(k for k in owner if k in flat)
    if source == "LoRA_type" and lycoris and preset in _PRESETS_WITHOUT_CONV:
        handled.add("LyCORIS_preset")
        extra["LyCORIS_preset"] = ["no conv layers, so lora.train_conv = false; its choice of other layers has "
                                   "no Kiln equivalent"]

    def ignore(key: str, why: str) -> None:
        extra.setdefault(owner[key], []).append(f"ignored: {why}" if owner[key] == key else
                                                f"ignored: {key} = {format_value(settings[key])} ({why})")

    conv_dim, dim_ok = coerce(settings.get("conv_dim"), "int")
    conv_alpha, alpha_ok = coerce(settings.get("conv_alpha"), "float")
    if lycoris:
        conv = preset not in _PRESETS_WITHOUT_CONV
    else:  # networks.lora: a conv_dim of 0 (or none) adds no conv layers
        conv = (gui_type == "kohya locon" or source == "network_args") and dim_ok and conv_dim > 0
    if kind != "lora":
        mapped["lora.type"] = (source, kind)
    if source != "network_args" or conv:
        mapped["lora.train_conv"] = (source, bool(conv))
    if conv:
        if dim_ok and conv_dim > 0:
            mapped["lora.conv_rank"] = (owner["conv_dim"], conv_dim)
        if alpha_ok and conv_alpha > 0:
            mapped["lora.conv_alpha"] = (owner["conv_alpha"], conv_alpha)
    elif source == "network_args" and (dim_ok and conv_dim > 0):
        ignore("conv_dim", f"LyCORIS preset {preset} has no conv layers")
    dora, ok = coerce(settings.get("dora_wd"), "bool")
    if ok and dora:
        if lycoris:
            mapped["lora.dora"] = (owner["dora_wd"], True)
        else:
            ignore("dora_wd", "Kohya passes DoRA to LyCORIS networks only, not to networks.lora")
    factor, ok = coerce(settings.get("factor"), "int")
    if "factor" in settings and not (ok and factor == -1):  # -1: LyCORIS' automatic split, Kiln's default too
        if kind != "lokr":
            ignore("factor", "used by LoKr only")
        elif ok and factor >= 1:
            mapped["lora.lokr_factor"] = (owner["factor"], factor)
        else:
            ignore("factor", "must be -1 (automatic) or a factor of at least 1")
    both, ok = coerce(settings.get("decompose_both"), "bool")
    if ok and both:
        if kind == "lokr":
            mapped["lora.lokr_decompose_both"] = (owner["decompose_both"], True)
        else:
            ignore("decompose_both", "used by LoKr only")
    if source == "network_args":
        known = ("algo", "conv_dim", "conv_alpha", "dora_wd", "factor", "decompose_both", "preset",
                 *FLOW_NETWORK_ARGS)  # the Flux/SD3 ones: kohya_flow.py
        rest = [f"{k}={v}" for k, v in args.items() if k not in known and v.lower() not in _OFF_TEXTS]
        if lycoris and preset not in ("full",) + _PRESETS_WITHOUT_CONV:
            rest.insert(0, f"preset={preset}")
        if rest:
            extra.setdefault("network_args", []).append(f"ignored: {', '.join(rest)} (no Kiln equivalent)")
    if kind == "lokr":
        _full_matrix_lokr(mapped, extra)
    if kind in ("loha", "lokr") and mapped.get("lora.dropout", (None, 0.0))[1]:
        extra.setdefault(mapped.pop("lora.dropout")[0], []).append(
            f"ignored: Kiln's {kind} layers have no dropout (LoRA and LoCon only)")


# LyCORIS's "full matrix" LoKr: a dim at least half of a layer's larger Kronecker side keeps both factors
# whole, and such a layer is scaled by 1 whatever its alpha; presets write a huge dim (100000) to mean "full
# everywhere". Kiln's largest rank, 1024, keeps both factors whole on every SD layer (the larger side is at most
# 2048 for factor >= 2), and alpha = rank scales them by 1.
_KILN_MAX_RANK = 1024


def _full_matrix_lokr(mapped: Mapped, extra: Extra) -> None:
    for rank_key, alpha_key in (("lora.rank", "lora.alpha"), ("lora.conv_rank", "lora.conv_alpha")):
        owner, dim = mapped.get(rank_key, (None, 0))
        if not isinstance(dim, int) or dim <= _KILN_MAX_RANK:
            continue
        alpha_owner = mapped.pop(alpha_key, (None, None))[0]
        mapped[rank_key] = (owner, _KILN_MAX_RANK)
        mapped[alpha_key] = (owner, float(_KILN_MAX_RANK))
        extra.setdefault(owner, []).append(
            f"LyCORIS's full-matrix LoKr ({owner} = {dim}: both Kronecker factors whole, scaled by 1); Kiln's "
            f"largest rank with alpha = rank trains the same on SD layers")
        if alpha_owner and alpha_owner != owner:
            extra.setdefault(alpha_owner, []).append("ignored: a full-matrix LoKr is scaled by 1 (LyCORIS)")


def _optimizer_differences(flat: dict[str, Any], mapped: Mapped, extra: Extra) -> None:
    """Kohya optimizers Kiln trains a little differently: plain Lion is Kiln's 8-bit Lion (the same update, its
    state stored in 8 bits); Adafactor with relative_step (Kohya's default for it) finds its own step size and
    ignores the learning rates, where Kiln's Adafactor steps at training.learning_rate."""
    owner, optimizer = mapped.get("training.optimizer", (None, ""))
    if optimizer == "lion8bit" and str(flat.get(owner, "")).lower().rsplit(".", 1)[-1] == "lion":
        extra.setdefault(owner, []).append("Kiln's Lion is bitsandbytes' 8-bit Lion: the same update, its state "
                                           "stored in 8 bits")
    relative, ok = coerce(_kohya_args(flat.get("optimizer_args")).get("relative_step", "true"), "bool")
    if optimizer != "adafactor" or not (ok and relative):
        return
    for target in ("training.learning_rate", "training.text_encoder_lr"):
        if target in mapped:
            extra.setdefault(mapped.pop(target)[0], []).append(
                "ignored: Kohya's Adafactor takes its relative step here (optimizer_args relative_step, true unless "
                "set) and finds its own step size; Kiln's Adafactor steps at training.learning_rate (default 1e-4): "
                "set it")


def _noise_and_loss(flat: dict[str, Any], mapped: Mapped, handled: set[str], extra: Extra) -> None:
    """The GUI's noise_offset_type picks one: "Original" passes noise_offset, "Multires" the multires keys
    (sd-scripts, without the key, takes both as given). Huber's c and schedule only matter for huber losses."""
    noise_type = str(flat.get("noise_offset_type") or "").lower()
    iterations, ok = coerce(flat.get("multires_noise_iterations"), "int")
    discount, discount_ok = coerce(flat.get("multires_noise_discount"), "float")
    handled |= {"multires_noise_iterations", "multires_noise_discount"} & flat.keys()
    if noise_type in ("original", "multires"):
        handled.add("noise_offset_type")
    if noise_type == "multires":
        extra["noise_offset_type"] = ["selects multires noise: noise_offset is not used"]
        if "training.noise_offset" in mapped:
            owner, offset = mapped.pop("training.noise_offset")
            if offset:
                extra.setdefault(owner, []).append('ignored: noise_offset_type = "Multires" (the GUI passes '
                                                   'noise_offset only with "Original")')
    if ok and iterations > 0:
        if noise_type == "original":
            extra["multires_noise_iterations"] = ['ignored: noise_offset_type = "Original" (the GUI passes '
                                                  'multires noise only with "Multires")']
        else:
            mapped["training.multires_noise_iterations"] = ("multires_noise_iterations", iterations)
            if discount_ok and discount != 0.3:
                mapped["training.multires_noise_discount"] = ("multires_noise_discount", discount)
    elif discount_ok and discount not in (0.0, 0.3):
        extra["multires_noise_discount"] = ["ignored: only used with multires_noise_iterations"]
    if mapped.get("training.loss", (None, "l2"))[1] not in ("huber", "smooth_l1"):
        for target in ("training.huber_c", "training.huber_schedule"):
            if target in mapped:
                extra.setdefault(mapped.pop(target)[0], []).append(
                    'ignored: only used with loss_type "huber" or "smooth_l1"')


def _kept_saves(flat: dict[str, Any], mapped: Mapped, handled: set[str], extra: Extra) -> None:
    """Kohya prunes step saves and epoch saves apart; Kiln's keep_last_n_saves counts every checkpoint, so a
    Kohya limit converts only when the other kind of save is off. save_last_n_epochs = M keeps the last M
    epoch files; save_last_n_steps = N (with save_every_n_steps = S) removes, at each save, the file of the
    multiple of S just below step - N, which always leaves N // S + 1 step files."""
    every_steps = coerce(flat.get("save_every_n_steps"), "int")[0] or 0
    every_epochs = coerce(flat.get("save_every_n_epochs"), "int")[0] or 0
    for key, own, other, other_key in (("save_last_n_steps", every_steps, every_epochs, "save_every_n_epochs"),
                                       ("save_last_n_epochs", every_epochs, every_steps, "save_every_n_steps")):
        count, ok = coerce(flat.get(key), "int")
        if not ok or count <= 0:
            continue
        handled.add(key)
        kind = key.rsplit("_", 1)[-1]  # steps / epochs
        if not isinstance(own, int) or own <= 0:
            extra[key] = [f"ignored: without save_every_n_{kind} there are no {kind[:-1]} saves to prune"]
        elif isinstance(other, int) and other > 0:
            extra[key] = [f"ignored: Kohya prunes step and epoch saves apart, output.keep_last_n_saves counts "
                          f"both (with {other_key} also on); set it by hand"]
        else:
            mapped["output.keep_last_n_saves"] = (key, count // own + 1 if kind == "steps" else count)


def _folders_and_weights(flat: dict[str, Any], method: str, mapped: Mapped, handled: set[str],
                         extra: Extra) -> None:
    """reg_data_dir: LoRA's regularisation folder or DreamBooth's class images; dim_from_weights: Kiln reads
    rank and alpha from lora.init_weights when they are left out."""
    reg, ok = coerce(flat.get("reg_data_dir"), "str")
    if ok and reg.strip():
        handled.add("reg_data_dir")
        if method == "dreambooth":
            mapped["dreambooth.class_dir"] = ("reg_data_dir", reg)
        elif method in ("textual_inversion", "finetune"):
            extra["reg_data_dir"] = [f"ignored: method = \"{method}\" uses no regularisation images"]
        else:
            mapped["dataset.reg_dir"] = ("reg_data_dir", reg)
    from_weights, ok = coerce(flat.get("dim_from_weights"), "bool")
    if ok and from_weights:
        handled.add("dim_from_weights")
        if "lora.init_weights" in mapped:
            for target in ("lora.rank", "lora.alpha"):
                if target in mapped:
                    extra.setdefault(mapped.pop(target)[0], []).append(
                        "ignored: dim_from_weights reads it from the network_weights file (lora.init_weights)")
            extra["dim_from_weights"] = ["lora.rank and lora.alpha are left out, so Kiln reads them from "
                                         "lora.init_weights"]
        else:
            extra["dim_from_weights"] = ["ignored: there is no network_weights file to read the rank from"]


def _implied(flat: dict[str, Any], method: str, mapped: Mapped, notes: list[str], handled: set[str],
             extra: Extra) -> None:
    """Settings Kohya implies rather than states: the network type, noise and loss options read together,
    kept saves, regularisation folders, text-encoder training from the learning rates, DreamBooth's text
    encoder and prior preservation."""
    _network_shape(flat, mapped, notes, handled, extra)
    _noise_and_loss(flat, mapped, handled, extra)
    _kept_saves(flat, mapped, handled, extra)
    _folders_and_weights(flat, method, mapped, handled, extra)
    _optimizer_differences(flat, mapped, extra)
    te1, te2 = (coerce(flat.get(k), "float") for k in ("learning_rate_te1", "learning_rate_te2"))
    if te2[1]:
        extra["learning_rate_te2"] = ["the same as learning_rate_te1: Kiln trains both text encoders at one "
                                      "training.text_encoder_lr" if te1 == te2 else
                                      "ignored: Kiln trains both text encoders at one training.text_encoder_lr "
                                      "(learning_rate_te1)"]
        handled.add("learning_rate_te2")
    step, ok = coerce(flat.get("bucket_reso_steps"), "int")
    if ok and step > 0 and step % 8 and "dataset.bucket_reso_steps" in mapped:
        extra.setdefault("bucket_reso_steps", []).append(
            "Kiln's bucket sides are multiples of 8 pixels, the VAE's factor (Kohya accepts other steps with a "
            "warning)")
    if method == "lora" and "network_train_unet_only" not in flat:
        unet_lr, _ = coerce(flat.get("unet_lr"), "float")
        te_lr, _ = coerce(flat.get("text_encoder_lr"), "float")
        if "LoRA_type" in flat:  # the GUI: a 0 text-encoder LR with a UNet LR means UNet only
            trains_te = not (not te_lr and unet_lr)
            reason = "text_encoder_lr" if "text_encoder_lr" in flat else "LoRA_type"
        else:  # sd-scripts trains the text encoder unless network_train_unet_only
            trains_te, reason = True, "network_train_unet_only"
        mapped.setdefault("lora.train_text_encoder", (reason, trains_te))
        if te_lr and not unet_lr and "unet_lr" in flat:
            notes.append(MigrationNote("unet_lr", flat["unet_lr"], "a text-encoder-only LoRA is not supported; "
                                       "Kiln trains the UNet at training.learning_rate as well"))
    if method == "finetune":
        train_te, ok = coerce(flat.get("train_text_encoder"), "bool")  # fine_tune.py trains it only when told
        if ok:
            handled.add("train_text_encoder")
            mapped["finetune.train_text_encoder"] = ("train_text_encoder", train_te)
    if method == "dreambooth":
        stop, ok = coerce(flat.get("stop_text_encoder_training"), "int")
        if ok:
            handled.add("stop_text_encoder_training")
            if stop < 0:
                mapped["dreambooth.train_text_encoder"] = ("stop_text_encoder_training", False)
            elif stop > 0 and flat.keys() & GUI_ONLY_KEYS:
                notes.append(MigrationNote("stop_text_encoder_training", flat["stop_text_encoder_training"],
                                           "ignored: the GUI gives a percentage; set dreambooth.stop_text_encoder_step "
                                           "to the step count"))
            else:
                mapped["dreambooth.stop_text_encoder_step"] = ("stop_text_encoder_training", stop)
        train_te, ok = coerce(flat.get("train_text_encoder"), "bool")  # fine_tune.py's switch
        if ok:
            handled.add("train_text_encoder")
            mapped["dreambooth.train_text_encoder"] = ("train_text_encoder", train_te)
        elif "dreambooth.train_text_encoder" not in mapped:  # train_db.py trains it unless told to stop
            mapped["dreambooth.train_text_encoder"] = ("stop_text_encoder_training", True)
        if not flat.get("reg_data_dir"):
            mapped["dreambooth.prior_preservation"] = ("reg_data_dir", False)


def _ignored_notes(flat: dict[str, Any], used: set[str]) -> list[str]:
    notes = []
    for key, value in flat.items():
        if key in used:
            continue
        off = value in (None, "", False, 0, [], "none", "None") or coerce(value, "float") == (0.0, True)
        if key in _KOHYA_DEFAULTS:
            kind = "float" if isinstance(_KOHYA_DEFAULTS[key], (int, float)) else "str"
            off = off or coerce(value, kind)[0] == _KOHYA_DEFAULTS[key]
        if key in _SECRET_KEYS:
            value = "(not shown)"
        if key in KOHYA_BY_NAME:
            if not off:
                why = _UNMAPPED_VALUE_HINTS.get(key, "a value Kiln does not support")
                notes.append(MigrationNote(key, value, f"ignored: {why}"))
        elif key in IGNORED_HINTS:
            if not off:
                notes.append(MigrationNote(key, value, f"ignored ({IGNORED_HINTS[key]})"))
        elif not off:  # keys the GUI writes as off/empty change nothing: no note
            notes.append(MigrationNote(key, value, "ignored: no Kiln equivalent"))
    return notes
